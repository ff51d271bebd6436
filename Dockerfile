# The anyplane command line (check, compile, verify, query, diff, map, fmt) in a container:
#   docker build -t anyplane .
#   docker run --rm -v "$PWD:/work" anyplane verify policies/
# Engines that load into a running kernel or talk to a switch need the host (push -t ebpf) or
# network access (push -t p4, -t envoy); compiling for them needs only what is installed here,
# except -t ebpf, which needs clang (apt-get install clang libbpf-dev).
FROM python:3.11-slim-bookworm
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /work
ENTRYPOINT ["anyplane"]
CMD ["--help"]
