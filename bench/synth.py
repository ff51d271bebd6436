"""A generator of large synthetic policies: services, versions, externals, L4 and L7 rules.

    python -m bench.synth 10000 > synth_10k.ap

About one service per 20 rules (70% with an http port, one in five with two
versions, one in four dual-stack), externals, and a rule mix of 35% L4
allows, 35% HTTP allows (methods, prefix and exact paths, some headers and
rate limits), 15% raw-CIDR rules and 15% prioritised denies. Deterministic
for a given size and seed.
"""

from __future__ import annotations

import random
import sys


def _service(i: int, rng: random.Random) -> tuple[str, bool]:
    http = rng.random() < 0.7
    lines = [f"service svc{i} {{", f"  address 10.{i // 256}.{i % 256}.0/24"
             + (f", fd00:{i:x}::/64" if i % 4 == 0 else ""),
             f"  port {8080 if http else 5432} {'http' if http else 'tcp'}"]
    if i % 5 == 0:
        lines += [f"  version v1 address 10.{i // 256}.{i % 256}.0/25",
                  f"  version v2 address 10.{i // 256}.{i % 256}.128/25"]
    lines.append("}")
    return "\n".join(lines), http


def _ports(rng: random.Random) -> str:
    lo = rng.choice((22, 80, 443, 1024, 3000, 5000, 8000, 9000, 9090))
    return str(lo) if rng.random() < 0.6 else f"{lo}-{lo + rng.randrange(1, 200)}"


def generate(n_rules: int, seed: int = 1) -> str:
    """A policy with `n_rules` rules."""
    rng = random.Random(seed)
    n_services = max(10, n_rules // 20)
    n_externals = max(2, n_rules // 200)
    out, http_services = [f"# synthetic policy: {n_rules} rules, {n_services} services", ""], []
    for i in range(n_services):
        text, http = _service(i, rng)
        out.append(text)
        if http:
            http_services.append(i)
    for j in range(n_externals):
        out.append(f"external ext{j} {{ address 100.{64 + j // 256}.{j % 256}.0/24 }}")
    out += ["external internet { address 0.0.0.0/0, ::/0 }", "", "default deny", ""]

    def svc(pool=None) -> str:
        i = rng.choice(pool) if pool else rng.randrange(n_services)
        if i % 5 == 0 and rng.random() < 0.3:
            return f"svc{i}.v{rng.randint(1, 2)}"
        return f"svc{i}"

    for k in range(n_rules):
        r = rng.random()
        if r < 0.35:
            line = f"allow {svc()} -> {svc()} tcp {_ports(rng)}"
        elif r < 0.70:
            methods = rng.choice(("GET", "GET, HEAD", "POST", "GET, POST", "*"))
            path = rng.choice((f"/api/v{rng.randint(1, 3)}/*", f"/r{k}", f"/items/{k % 97}/*", "/*"))
            line = f"allow {svc()} -> {svc(http_services)} http {methods} {path}"
            if rng.random() < 0.1:
                line += ' header "x-tenant" = "t' + str(k % 13) + '"'
            if rng.random() < 0.1:
                line += f" rate {rng.choice((10, 50, 100))}/s burst {rng.choice((20, 100))}"
        elif r < 0.85:
            src = f"100.{64 + rng.randrange(4)}.{rng.randrange(256)}.0/{rng.choice((24, 26, 28))}"
            line = f"allow {src} -> {svc()} tcp {_ports(rng)}"
        else:
            if rng.random() < 0.5:
                line = f"deny ext{rng.randrange(n_externals)} -> {svc()}"
            else:
                line = f"deny any -> {svc(http_services)} http DELETE, PUT /admin/*"
            line += f" priority {rng.randint(1, 100)}"
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m bench.synth N_RULES [SEED] > policy.ap")
    sys.stdout.write(generate(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 1))
