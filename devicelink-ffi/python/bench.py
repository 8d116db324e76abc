"""The Python side of the bindings bench (scripts/bindings_bench.sh): N
whole links in process through the binding, the same steps as
devicelink-ffi/examples/link_bench.rs.

    python bench.py 200
"""

import sys
import time

import devicelink as dl

NOW = 1_700_000_000_000


def until_send(role):
    while True:
        o = role.poll_output()
        if isinstance(o, dl.Output.SEND):
            return o.message
        if o is None:
            raise SystemExit("expected a message")


def one_link():
    phone = dl.Phone(NOW)
    device = dl.Device("bench", NOW)
    while device.poll_output() is not None:
        pass
    phone.open_link_intent(NOW)
    token = phone.scan(device.offer_text(), NOW)
    device.receive(until_send(phone), NOW)
    phone.receive(until_send(device), NOW)
    phone.approve(token, NOW)
    device.receive(until_send(phone), NOW)
    device.consent(NOW)
    linked = phone.receive(until_send(device), NOW)
    while phone.poll_output() is not None:
        pass
    while device.poll_output() is not None:
        pass
    return isinstance(linked, dl.PhoneEvent.LINKED)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for _ in range(10):
        one_link()
    start = time.perf_counter()
    for _ in range(n):
        if not one_link():
            raise SystemExit("a link failed")
    ms = (time.perf_counter() - start) * 1e3
    print(f"python: {n} links in {ms:.1f} ms")


if __name__ == "__main__":
    main()
