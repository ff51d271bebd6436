"""Kubernetes NetworkPolicy as an engine (an exporter): compile -t k8s."""
