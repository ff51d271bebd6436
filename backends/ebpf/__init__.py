"""The kernel engine: an XDP program whose policy lives in BPF maps."""
