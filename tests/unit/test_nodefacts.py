from pathlib import Path

import pytest

from saltext.vmcluster import nodefacts

FIXTURES = Path(__file__).parent / "drbd" / "fixtures" / "drbd84"

MEMINFO = """MemTotal:       24684088 kB
MemFree:        20000000 kB
MemAvailable:   22000000 kB
HugePages_Total:       0
"""


def test_meminfo_is_read_in_mib():
    mem = nodefacts.parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 24684088 // 1024
    assert mem["MemAvailable"] == 22000000 // 1024
    assert mem["HugePages_Total"] == 0


def test_memory_summary_promises_instances_their_full_memory():
    mem = {"MemTotal": 24000, "MemAvailable": 21000}
    # 3000 MiB in use of which 500 MiB is guests' resident memory: the node OS uses 2500.
    summary = nodefacts.memory_summary(mem, instance_memory=4096, instance_rss=500)
    assert summary == {"total": 24000, "node": 2500, "instances": 4096, "free": 24000 - 2500 - 4096}


def test_memory_summary_never_negative():
    summary = nodefacts.memory_summary({"MemTotal": 1000, "MemAvailable": 900}, 5000, 400)
    assert summary["node"] == 0 and summary["free"] == 0


def test_cpu_model():
    assert nodefacts.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert nodefacts.cpu_model("processor : 0\n") is None


def test_drbd_versions_from_the_real_8_4_pair():
    text = (FIXTURES / "drbdadm_version.txt").read_text()
    assert nodefacts.drbd_versions(text) == {"userspace": "9.22.0", "kernel": "8.4.11"}


def test_drbd_versions_without_kernel_module():
    text = "DRBD_KERNEL_VERSION_CODE=0x000000\nDRBD_KERNEL_VERSION=0\nDRBDADM_VERSION=9.22.0\n"
    assert nodefacts.drbd_versions(text) == {"userspace": "9.22.0", "kernel": None}
    assert nodefacts.drbd_versions("") == {"userspace": None, "kernel": None}


def test_libvirt_version():
    assert nodefacts.libvirt_version(9000000) == "9.0.0"
    assert nodefacts.libvirt_version(7002022) == "7.2.22"


def test_volume_group_space():
    entry = {"Physical Extent Size (kB)": "4096", "Total Physical Extents": "2559", "Free Physical Extents": "1000"}
    assert nodefacts.volume_group_space(entry) == {"total": 2559 * 4, "free": 4000}


def test_directory_space(tmp_path):
    space = nodefacts.directory_space(str(tmp_path))
    assert 0 < space["free"] <= space["total"]
    with pytest.raises(OSError):
        nodefacts.directory_space(str(tmp_path / "missing"))


def test_vm_rss():
    assert nodefacts.vm_rss_mib("Name:\tqemu\nVmRSS:\t  204800 kB\n") == 200
    assert nodefacts.vm_rss_mib("Name:\tqemu\n") == 0

