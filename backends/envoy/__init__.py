"""The sidecar engine: Envoy configuration for every service, pushed through filesystem xDS."""
