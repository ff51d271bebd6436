"""What the Kubernetes exporters share (-t k8s, -t cilium, -t istio): the export of a policy as
NetworkPolicies over regions of identities (export.py), and how identities' pods are selected
(selectors.py). No engine of its own: each exporter's engine is in its folder."""
