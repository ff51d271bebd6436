"""Istio as an engine (an exporter): compile -t istio."""
