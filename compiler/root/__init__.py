"""anyplane: one policy language compiled to Envoy, eBPF/XDP and P4, verified with Z3.

The packages: `anyplane.compiler` (the language, the driver and its API in
`anyplane.compiler.api`, the CLI), `anyplane.ir` (the match-action IR and its
reference interpreter), `anyplane.backends` (the engines), `anyplane.verify`
(Z3). `python -m anyplane` runs the command line.
"""
