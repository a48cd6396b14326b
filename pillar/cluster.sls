# Example cluster declaration (validated by saltext.vmcluster.config; errors name the key path).
cluster:
  name: example
  nodes:
    node1:
      group: rack1
      replication_address: 192.0.2.11
    node2:
      group: rack1
      replication_address: 192.0.2.12
    node3:
      group: rack2
      replication_address: 192.0.2.13
