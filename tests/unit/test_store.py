"""The store on Salt's real localfs cache, and its locks."""

import multiprocessing
import time

import pytest
import salt.cache

from saltext.vmcluster.store import LockTimeout, Store


@pytest.fixture
def store(tmp_path):
    cache = salt.cache.factory({"cache": "localfs", "cachedir": str(tmp_path / "cache")})
    return Store(cache, tmp_path / "locks")


def test_records_round_trip(store):
    assert store.instance("web1") is None and store.instances() == {}
    store.put_instance({"name": "web1", "primary": "node1"})
    store.put_instance({"name": "db1", "primary": "node2"})
    assert store.instance("web1") == {"name": "web1", "primary": "node1"}
    assert list(store.instances()) == ["db1", "web1"]
    store.delete_instance("web1")
    assert list(store.instances()) == ["db1"]


def test_node_flags_default_to_online(store):
    assert store.node_flags("node1") == {"offline": False, "drained": False}
    store.put_node_flags("node1", {"drained": True})
    assert store.node_flags("node1") == {"offline": False, "drained": True}


def _hold(lock_dir, cachedir, names, seconds, ready):
    cache = salt.cache.factory({"cache": "localfs", "cachedir": cachedir})
    with Store(cache, lock_dir).locked(names, {"job": "J1", "operation": "migrate"}):
        ready.set()
        time.sleep(seconds)


def test_a_held_lock_makes_others_wait_then_names_the_holder(store, tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(
        target=_hold, args=(store.lock_dir, str(tmp_path / "cache"), ["instance/web1"], 1.5, ready))
    holder.start()
    assert ready.wait(10)
    started = time.monotonic()
    with pytest.raises(LockTimeout, match=r"instance/web1 is locked by job J1 \(migrate, pid \d+"):
        with store.locked(["instance/web1"], {"job": "J2"}, timeout=0.3):
            pass
    assert 0.3 <= time.monotonic() - started < 1.4
    with store.locked(["instance/web1"], {"job": "J2"}, timeout=10):  # waits for the holder to finish
        assert time.monotonic() - started >= 1.0
    holder.join()


def test_other_locks_are_free(store, tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(
        target=_hold, args=(store.lock_dir, str(tmp_path / "cache"), ["instance/web1"], 1.0, ready))
    holder.start()
    assert ready.wait(10)
    with store.locked(["instance/db1", "node/node1"], {"job": "J3"}, timeout=0.2):
        pass
    holder.join()


def test_locks_are_taken_in_sorted_order(store, monkeypatch):
    taken = []
    real = Store._lock

    def spy(self, name, holder, timeout):
        taken.append(name)
        return real(self, name, holder, timeout)

    monkeypatch.setattr(Store, "_lock", spy)
    with store.locked(["node/b", "instance/z", "node/a", "instance/z"], {"job": "J"}):
        pass
    assert taken == ["instance/z", "node/a", "node/b"]
