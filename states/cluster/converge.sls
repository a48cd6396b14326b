{#- Orchestrate: make the cluster match the declared instances of pillar cluster:instances.

      salt-run state.orchestrate cluster.converge            # add / modify / grow / start / stop
      salt-run state.orchestrate cluster.converge test=True  # the plans, nothing changed

    Instances nobody declared are left alone (cluster.verify lists them as undeclared).
    Every instance state requires a valid cluster pillar: invalid pillar changes nothing. -#}
{%- set instances = salt['pillar.get']('cluster:instances', {}) %}

cluster-pillar:
  cluster.pillar_valid

{%- if instances is mapping %}
{%- for name, spec in instances | dictsort %}

cluster-instance-{{ name }}:
  cluster.instance_present:
    - name: {{ name | json }}
{%- for key, value in (spec if spec is mapping else {}) | dictsort %}
    - {{ key }}: {{ value | json }}
{%- endfor %}
    - require:
      - cluster: cluster-pillar
{%- endfor %}
{%- endif %}
