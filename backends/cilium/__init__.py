"""CiliumNetworkPolicy as an engine (an exporter): compile -t cilium."""
