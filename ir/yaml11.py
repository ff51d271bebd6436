"""What Kubernetes makes of YAML text, and YAML that Kubernetes reads back as it was written.

kubectl and the API server read manifests with go-yaml v2, a YAML 1.1 reader, and turn them into JSON
(sigs.k8s.io/yaml) before any field is looked at. YAML 1.1 reads many plain scalars as something other
than the string they look like, and a key that is not a string takes its JSON spelling::

    labels: {y: postgres}        ->  {"true": "postgres"}     y, n, Yes, on, OFF are booleans
    ports: [{port: 1e3}]         ->  [{"port": 1000}]         017, 0o17, 0x1F, 0b101, 1_000, .5 are numbers
    matchLabels: {app: y}        ->  refused: a label value must be a string, and true is not one

PyYAML and YAML 1.2 readers keep `y`, `1e3` and `0o17` as strings: a proof that read an export with them
would prove something other than what the cluster enforces. So everything anyplane reads as a manifest
goes through `load`, and everything it writes as one through `dump_all`, which quotes each string that
`load` would read as anything else.

`load` also refuses what would make a reader blow up: nesting deeper than `MAX_DEPTH`, aliases that
expand beyond go-yaml's own budget (expansion is by reference, so a shared list costs nothing to read),
duplicate keys (Kubernetes keeps one of them, unspecified which), and null or non-scalar keys.
"""

from __future__ import annotations

import base64
import math
import re
import struct

import yaml

from .source import Diagnostic, DiagnosticError, Span, error, warning

MAX_DEPTH = 100
_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's event parser, iterative

_BOOL = {**dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
         **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False)}
_SPECIAL = {**_BOOL, **dict.fromkeys(("", "~", "null", "Null", "NULL")),
            **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
            **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
            **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf)}
_HINTS = frozenset("+-0123456789yYnNtTfFoO~.")
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")  # a Go float literal that starts with a dot
_INT_BASES = (("0x", 16, "0123456789abcdefABCDEF"), ("0X", 16, "0123456789abcdefABCDEF"),
              ("0o", 8, "01234567"), ("0O", 8, "01234567"), ("0b", 2, "01"), ("0B", 2, "01"))
# What YAML 1.2's core schema reads (most editors, yq 4, ruamel): where YAML 1.1 differs, a note says so.
_CORE_SPECIAL = {k: v for k, v in _SPECIAL.items() if k.lower() not in ("y", "yes", "n", "no", "on", "off")}


def _core(text: str):
    """The value YAML 1.2's core schema gives a plain scalar."""
    if text in _CORE_SPECIAL:
        return _CORE_SPECIAL[text]
    if not text or text[0] not in "+-0123456789.":
        return text  # no number starts otherwise
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"0o[0-7]+|0x[0-9a-fA-F]+", text):
        return int(text[2:], 8 if text[1] == "o" else 16)
    if _GO_FLOAT.fullmatch(text):
        return float(text)
    return text


def _go_int(text: str) -> int | None:
    """Go's strconv.ParseInt(text, 0, 64), then ParseUint, then big.Int: None where all refuse."""
    sign, body = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
    for prefix, base, digits in _INT_BASES:
        if body.startswith(prefix):
            rest = body[len(prefix):]
            break
    else:
        base, rest, digits = (8, body[1:], "01234567") if len(body) > 1 and body[0] == "0" else (10, body, "0123456789")
    if not rest or any(c not in digits for c in rest):
        return None
    value = int(rest, base) * (-1 if sign == "-" else 1)
    # Past 64 bits Kubernetes' reader keeps the text (a decimal then reads as a float).
    return value if -(1 << 63) <= value < (1 << 63) or (sign == "" and value < (1 << 64)) else None


def resolve(text: str):
    """The value go-yaml v2 gives a plain (unquoted, untagged) scalar: bool, int, float, None or the text."""
    if text in _SPECIAL:
        return _SPECIAL[text]
    if not text or text[0] not in _HINTS or text[0] in "yYnNtTfFoO~":
        return text
    if text[0] == ".":
        return float(text) if _DOT_FLOAT.fullmatch(text) and not math.isinf(float(text)) else text
    if _timestamp(text):
        return text  # go-yaml keeps a timestamp as its text when it decodes into an untyped value
    plain = text.replace("_", "")
    number = _go_int(plain)
    if number is not None:
        return number
    if _GO_FLOAT.fullmatch(plain):
        value = float(plain)
        return text if math.isinf(value) else value
    if plain.startswith(("0b", "-0b")):
        sign = -1 if plain[0] == "-" else 1
        digits = plain[3:] if sign < 0 else plain[2:]
        if digits and all(c in "01" for c in digits):
            value = sign * int(digits, 2)
            return value if -(1 << 63) <= value < (1 << 64) else text
    return text


_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
                        r"(([Tt][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]{1,9})?(Z|[-+][0-9]{2}:[0-9]{2}))"
                        r"|( [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]{1,9})?))?")


def _timestamp(text: str) -> bool:
    return bool(_TIMESTAMP.fullmatch(text))


def _float32_text(value: float) -> str:
    """Go's strconv.FormatFloat(value, 'g', -1, 32): the shortest digits that give back the float32, in
    exponent form when the exponent is below -4 or at least 6."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    single = struct.unpack("f", struct.pack("f", value))[0]
    sign = "-" if math.copysign(1, single) < 0 else ""
    if single == 0:
        return sign + "0"
    for precision in range(1, 10):
        text = f"{abs(single):.{precision - 1}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == abs(single):
            break
    mantissa, exponent = text.split("e")
    digits, exp = mantissa.replace(".", "").rstrip("0") or "0", int(exponent)
    if exp < -4 or exp >= 6:
        return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    whole = digits[:exp + 1].ljust(exp + 1, "0")
    return sign + whole + ("." + digits[exp + 1:] if len(digits) > exp + 1 else "")


def key_text(value) -> str | None:
    """The JSON key sigs.k8s.io/yaml makes of a YAML key (None: it refuses the key)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(1 << 63) <= value < (1 << 63) else None  # uint64 and big keys are refused
    if isinstance(value, float):
        return _float32_text(value)
    return value if isinstance(value, str) else None


class Mapping(dict):
    """A YAML mapping as Kubernetes reads it (string keys), with the position of itself, of each key and of
    each value."""

    __slots__ = ("span", "key_spans", "value_spans")


class Sequence(list):
    """A YAML sequence, with the position of itself and of each item."""

    __slots__ = ("span", "item_spans")


def span_of(node, default: Span) -> Span:
    """Where a mapping or sequence begins (`default` for a scalar, which knows no position of its own)."""
    return getattr(node, "span", default)


class _Builder:
    """Turns parser events into Mappings, Sequences and scalars, without recursion."""

    def __init__(self, path: str):
        self.path = path
        self.notes: list[Diagnostic] = []
        self.anchors: dict[str, tuple] = {}
        self.counts = [0, 0]  # nodes decoded, and of those, decoded again through aliases

    def span(self, mark) -> Span:
        return Span(self.path, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2)

    def fail(self, mark, message: str):
        raise DiagnosticError([error(self.span(mark), "yaml", message)])

    def scalar(self, event):
        """(value, plain): a scalar event's value as go-yaml v2 gives it."""
        tag, text = event.tag, event.value
        plain = event.implicit[0] and tag is None and not event.style
        if plain:
            return resolve(text), True
        if tag in (None, "!", "tag:yaml.org,2002:str") or (tag and not tag.startswith("tag:yaml.org,2002:")):
            return text, False  # quoted, `!`, `!!str`, or a local tag: go-yaml keeps the text
        if tag == "tag:yaml.org,2002:binary":
            try:
                return base64.b64decode(text, validate=False).decode("utf-8"), False
            except (ValueError, UnicodeDecodeError):
                self.fail(event.start_mark, "!!binary: not base64 of UTF-8 text")
        value = resolve(text)
        kinds = {"tag:yaml.org,2002:bool": bool, "tag:yaml.org,2002:int": int, "tag:yaml.org,2002:float": (int, float),
                 "tag:yaml.org,2002:null": type(None)}
        wanted = kinds.get(tag)
        if wanted is None or not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            self.fail(event.start_mark, f"{tag.replace('tag:yaml.org,2002:', '!!')} {text!r}: Kubernetes cannot read it")
        return (float(value) if tag.endswith(":float") else value), False

    def note_meaning(self, event, value) -> None:
        """A plain scalar that YAML 1.2 reads otherwise than Kubernetes does: say so where it stands."""
        core = _core(event.value)
        if type(core) is type(value) and (core == value or core != core):
            return
        self.notes.append(warning(self.span(event.start_mark), "yaml", f"Kubernetes reads the plain {event.value!r} "
                                  f"as {_describe(value)}, as YAML 1.1 does; quote it if the text was meant"))

    def build(self, events) -> list:
        docs: list = []
        stack: list = []  # [container, pending key (mappings), key mark, expanded size, anchor]
        for event in events:
            kind = type(event)
            if kind in (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentStartEvent):
                continue
            if kind is yaml.DocumentEndEvent:
                self.anchors = {}
                continue
            if kind in (yaml.MappingStartEvent, yaml.SequenceStartEvent):
                if len(stack) >= MAX_DEPTH:
                    self.fail(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
                node = Mapping() if kind is yaml.MappingStartEvent else Sequence()
                node.span = self.span(event.start_mark)
                if isinstance(node, Mapping):
                    node.key_spans, node.value_spans = {}, {}
                else:
                    node.item_spans = []
                if event.anchor:
                    self.anchors[event.anchor] = (None, 0)  # being built: an alias to it would contain itself
                stack.append([node, _NO_KEY, None, 1, event.anchor, []])
                continue
            if kind in (yaml.MappingEndEvent, yaml.SequenceEndEvent):
                node, _, _, size, anchor, merges = stack.pop()
                if merges:
                    self.merge(node, merges)
                if anchor:
                    self.anchors[anchor] = (node, size)
                self.place(docs, stack, node, size, event.start_mark, node.span)
                continue
            if kind is yaml.AliasEvent:
                node, size = self.anchors.get(event.anchor, (_NO_KEY, 0))
                if node is _NO_KEY:
                    self.fail(event.start_mark, f"alias *{event.anchor} names no anchor before it")
                if node is None:
                    self.fail(event.start_mark, f"alias *{event.anchor} is inside its own anchor")
                self.counts[1] += size
                self.place(docs, stack, node, size, event.start_mark, span_of(node, self.span(event.start_mark)),
                           alias=True)
                continue
            value, plain = self.scalar(event)
            span = self.span(event.start_mark)
            if plain and not (stack and stack[-1][1] is _NO_KEY and isinstance(stack[-1][0], Mapping)):
                self.note_meaning(event, value)
            if event.anchor:
                self.anchors[event.anchor] = (value, 1)
            is_merge = plain and event.value == "<<"
            self.place(docs, stack, _Merge if is_merge else value, 1, event.start_mark, span, text=event.value,
                       plain=plain)
        return docs

    def place(self, docs, stack, node, size, mark, span, alias=False, text=None, plain=False):
        """Put a finished node where it belongs: a document, an item, a key, or a key's value."""
        self.counts[0] += size
        if self.counts[1] > 100 and self.counts[0] > 1000 and self.counts[1] / self.counts[0] > _alias_ratio(
                self.counts[0]):
            self.fail(mark, "aliases expand this document too far (Kubernetes' reader refuses it too)")
        if not stack:
            docs.append(node)
            return
        top = stack[-1]
        top[3] += size
        container = top[0]
        if isinstance(container, Sequence):
            container.append(node)
            container.item_spans.append(span)
            return
        if top[1] is _NO_KEY:  # a key
            if node is _Merge:
                top[1], top[2] = _Merge, span
                return
            key = key_text(node) if not isinstance(node, (Mapping, Sequence)) else None
            if key is None:
                shown = "null" if node is None else type(node).__name__
                self.fail(mark, f"a key Kubernetes cannot read ({shown}): keys must be strings")
            if plain and key != text:
                self.notes.append(warning(span, "yaml", f"Kubernetes reads the key {text!r} as {key!r}, as YAML 1.1 "
                                                        f"does; quote it ('{text}') if the text was meant"))
            if key in container:
                first = container.key_spans[key]
                self.fail(mark, f"duplicate key {key!r} (first at line {first.line}); Kubernetes would keep one "
                                "of them, which one is not specified")
            top[1], top[2] = key, span
            return
        key, key_span = top[1], top[2]
        top[1] = _NO_KEY
        if key is _Merge:
            top[5].append((node, key_span, len(container)))
            if not (isinstance(node, Mapping) or (isinstance(node, Sequence) and all(isinstance(m, Mapping)
                                                                                      for m in node))):
                self.fail(mark, "a merge (<<) takes a mapping or a list of mappings")
            return
        container[key] = node
        container.key_spans[key] = key_span
        container.value_spans[key] = span

    @staticmethod
    def merge(node: Mapping, merges: list) -> None:
        """go-yaml v2's merge: in the order written, a merge sets its keys over what came before it, and of
        a list of mappings the first wins; keys written after the merge win over it."""
        explicit = list(node.items())
        order = {k: i for i, k in enumerate(node)}
        positions = {k: node.key_spans[k] for k in node}
        merged: dict = {}
        events = [(i, "key", k) for i, (k, _) in enumerate(explicit)]
        for source, _, before in merges:
            events.append((before - 0.5, "merge", source))
        events.sort(key=lambda e: e[0])
        for _, what, item in events:
            if what == "key":
                merged[item] = (node[item], positions[item], node.value_spans[item])
            else:
                for m in reversed(item) if isinstance(item, Sequence) else (item,):
                    for k, v in m.items():
                        merged[k] = (v, m.key_spans[k], m.value_spans[k])
        del order
        node.clear()
        node.key_spans, node.value_spans = {}, {}
        for k, (v, ks, vs) in merged.items():
            node[k] = v
            node.key_spans[k] = ks
            node.value_spans[k] = vs


_NO_KEY = object()
_Merge = object()


def _alias_ratio(decoded: int) -> float:
    """go-yaml v2's budget for aliases: any share up to 400,000 decoded nodes, then less, down to 10% at
    4,000,000."""
    if decoded <= 400_000:
        return 0.99
    if decoded >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * (decoded - 400_000) / 3_600_000


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if value is None:
        return "null"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return f"the number {value}"
    return f"the number {value:g}" if isinstance(value, float) else f"the number {value}"


def load(path: str, text: str) -> tuple[list, list[Diagnostic]]:
    """The documents of a YAML text as Kubernetes reads them, and warnings where a plain scalar means
    something other than its text; a DiagnosticError at the position of what Kubernetes would refuse."""
    builder = _Builder(path)
    try:
        docs = builder.build(yaml.parse(text, Loader=_Parser))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "malformed"
        raise DiagnosticError([error(Span(path, line, col, line, col + 1), "yaml", f"not YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise DiagnosticError([error(Span(path, 1, 1, 1, 2), "yaml", f"not YAML: {exc}")]) from None
    return docs, builder.notes


def check_json(node, path: str, where: Span) -> None:
    """Kubernetes turns each document into JSON: NaN and infinities have no JSON form, and the document is
    refused."""
    stack = [(node, where)]
    seen: set = set()
    while stack:
        item, span = stack.pop()
        if isinstance(item, float) and (math.isnan(item) or math.isinf(item)):
            raise DiagnosticError([error(span, "yaml", f"{_describe(item)} has no JSON form: Kubernetes refuses "
                                                       "the document")])
        if isinstance(item, (Mapping, Sequence)) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, Mapping):
                stack += [(v, item.value_spans[k]) for k, v in item.items()]
            else:
                stack += list(zip(item, item.item_spans))


# ---- writing -----------------------------------------------------------------------------------------


def reads_as_text(text: str) -> bool:
    """Whether Kubernetes reads `text`, written plain, as that same string."""
    return resolve(text) == text and isinstance(resolve(text), str) and text != "<<"


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml's emitter when present
    """PyYAML's safe dumper, but a string that YAML 1.1 as Kubernetes reads it would turn into something
    else is quoted. (Envoy's reader, yaml-cpp, also reads y, n, on and off as booleans.)"""


def _represent_str(dumper, data: str):
    if not reads_as_text(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_Dumper.add_representer(str, _represent_str)


def dump(obj, **options) -> str:
    """One document as YAML that Kubernetes reads back as `obj`."""
    return yaml.dump(obj, Dumper=_Dumper, **options)


def dump_all(objects, **options) -> str:
    """Several documents, each opened by `---`, as YAML that Kubernetes reads back as written."""
    return "".join("---\n" + dump(o, **options) for o in objects)
