"""The connectivity map as pictures: Graphviz dot, SVG (Graphviz's `dot`), and one self-contained
HTML page (the SVG, the edges as a table, a filter box; no outside resources).

Every name and label from a policy reaches the output escaped: dot strings quoted, HTML and SVG text
through `html.escape`.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess

from .pipeline import UsageError

_COLORS = {"added": "darkgreen", "removed": "red", "changed": "orange"}


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(result: dict) -> str:
    """Graphviz: a box per identity (an ellipse per external), an edge per connected pair labelled with
    its protocols and ports (and HTTP conditions); dashed where only some flows pass."""
    lines = ["digraph anyplane {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];",
             "  edge [fontname=Helvetica, fontsize=10];"]
    for n in result["nodes"]:
        shape = "ellipse" if n["kind"] == "external" else "box"
        lines.append(f"  {_dot_text(n['name'])} [shape={shape}];")
    for e in result["edges"]:
        label = "\n".join([e["label"]] + e["http"])
        style = "solid" if e["everything"] else "dashed"
        color = _COLORS.get(e.get("change"), "black")
        lines.append(f"  {_dot_text(e['src'])} -> {_dot_text(e['dst'])} [label={_dot_text(label)}, style={style}, "
                     f"color={color}];")
    return "\n".join(lines + ["}"]) + "\n"


def svg(result: dict) -> str:
    """The dot picture drawn by Graphviz (Debian's `graphviz`)."""
    binary = shutil.which("dot")
    if binary is None:
        raise UsageError("--format svg needs Graphviz's dot (apt-get install graphviz)")
    done = subprocess.run([binary, "-Tsvg"], input=dot(result), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise UsageError(f"Graphviz failed: {done.stderr.strip()[:500]}")
    text = done.stdout
    return text[text.index("<svg"):] if "<svg" in text else text


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }}
#picture svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
tr.added td {{ background: #e6f4e6; }} tr.removed td {{ background: #fbe3e3; }} tr.changed td {{ background: #fff1d6; }}
.some {{ color: #a15c00; }}
ul.identities {{ columns: 3; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<div id="picture">{picture}</div>
<h2>Identities</h2>
<ul class="identities">{identities}</ul>
<h2>Who can reach whom</h2>
<p><label>Filter <input id="filter" type="search" placeholder="name, protocol or port"></label>
<span id="shown"></span></p>
<table id="edges">
<thead><tr><th>source</th><th>destination</th><th>flows</th><th>HTTP</th><th>rules</th>{change_head}</tr></thead>
<tbody>{rows}</tbody>
</table>
<script>
(function () {{
  var rows = Array.prototype.slice.call(document.querySelectorAll("#edges tbody tr"));
  var shown = document.getElementById("shown");
  function update() {{
    var q = document.getElementById("filter").value.toLowerCase();
    var n = 0;
    rows.forEach(function (r) {{
      var hit = r.textContent.toLowerCase().indexOf(q) >= 0;
      r.style.display = hit ? "" : "none";
      if (hit) {{ n += 1; }}
    }});
    shown.textContent = n + " of " + rows.length + " edges";
  }}
  document.getElementById("filter").addEventListener("input", update);
  update();
}})();
</script>
<script type="application/json" id="data">{data}</script>
</body>
</html>
"""


def page(result: dict, title: str = "anyplane connectivity map") -> str:
    """One self-contained HTML page: the picture, every identity, the edges (filterable), the JSON."""
    esc = html.escape
    compare = any("change" in e for e in result["edges"])
    rows = []
    for e in result["edges"]:
        cls = e.get("change", "")
        rules = e["rules"] + (["(the default)"] if e["default"] else [])
        cells = [e["src"], e["dst"]]
        rows.append(f'<tr class="{esc(cls)}">' + "".join(f"<td>{esc(c)}</td>" for c in cells)
                    + f'<td class="{"all" if e["everything"] else "some"}">{esc(e["label"])}</td>'
                    + f"<td>{'<br>'.join(esc(h) for h in e['http'])}</td>"
                    + f"<td>{'<br>'.join(esc(r) for r in rules)}</td>"
                    + (f"<td>{esc(cls)}</td>" if compare else "") + "</tr>")
    identities = "".join(f'<li>{esc(n["name"])} <small>({esc(n["kind"])})</small></li>' for n in result["nodes"])
    summary = f"{len(result['nodes'])} identities, {len(result['edges'])} edges; dashed: only some flows pass."
    # JSON inside <script>: "</" must not close the element.
    data = json.dumps(result, sort_keys=True).replace("</", "<\\/").replace("<!--", "<\\!--")
    picture = svg(result) if shutil.which("dot") else "<p>(Graphviz's dot is not installed: no picture)</p>"
    return _PAGE.format(title=esc(title), summary=esc(summary), picture=picture, identities=identities,
                        rows="\n".join(rows), change_head="<th>change</th>" if compare else "", data=data)
