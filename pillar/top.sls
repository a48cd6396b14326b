# Example pillar top file: the cluster declaration goes to every minion and to the master.
base:
  '*':
    - cluster
