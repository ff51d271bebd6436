"""Run by p4runtime-shell's own Python (`.p4sh/`, protobuf 3.20): connect to a P4Runtime target as an
operator would, with the P4Info file anyplane emitted, and print every entry of a table as JSON.

    .p4sh/bin/python tests/p4sh_read.py ADDR DEVICE_ID P4INFO.txt TABLE

One JSON object per line: {"fields": [match field names], "action": name, "entry": TableEntry as text}.
"""

import json
import sys

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2
from p4runtime_sh import shell
from p4runtime_sh.p4runtime import P4RuntimeClient


def main(addr: str, device_id: str, p4info_path: str, table: str) -> None:
    info = p4info_pb2.P4Info()
    with open(p4info_path) as f:
        text_format.Parse(f.read(), info)
    shell.client = P4RuntimeClient(int(device_id), addr, (0, 7))
    try:
        shell.context.set_p4info(info)
        for te in shell.TableEntry(table).read():
            # The shell decoded the entry with our P4Info: field and action names are its reading.
            print(json.dumps({"fields": sorted(te.match._mk), "action": te.action.action_name if te.action else None,
                              "entry": text_format.MessageToString(te.msg())}))
    finally:
        shell.client.tear_down()


if __name__ == "__main__":
    main(*sys.argv[1:])
