"""The Python binding (UniFFI): a phone and a companion linked in process
and through a real devicelink-relay process, errors as exceptions carrying
their class, and saved state.

Run by scripts/test_bindings.sh (which builds the wheel and the relay);
DEVICELINK_RELAY_BIN names the relay binary.
"""

import asyncio
import os
import re
import subprocess
import time

import pytest

import devicelink as dl

NOW = 1_700_000_000_000


def drain(role):
    """Every output the role queued, oldest first."""
    out = []
    while (o := role.poll_output()) is not None:
        out.append(o)
    return out


def kinds(outputs):
    return [type(o).__name__.removeprefix("Output.") for o in outputs]


def sent(outputs):
    return [o.message for o in outputs if isinstance(o, dl.Output.SEND)]


def link_in_process(phone, device, now=NOW):
    """Carries every output by hand, as a relay would; returns the index."""
    assert isinstance(drain(device)[0], dl.Output.REGISTER)
    phone.open_link_intent(now)
    token = phone.scan(device.offer_text(), now)
    (hello,) = sent(drain(phone))
    assert device.receive(hello, now) == dl.DeviceEvent.ACCEPTED()
    (request,) = sent(drain(device))
    event = phone.receive(request, now)
    assert isinstance(event, dl.PhoneEvent.PROMPT)
    assert event.prompt.token == token
    phone.approve(token, now)
    outputs = drain(phone)
    assert kinds(outputs) == ["SAVE", "PUBLISH_LIST", "SEND"]
    joined = device.receive(sent(outputs)[0], now)
    assert isinstance(joined, dl.DeviceEvent.PROMPT)
    assert joined.prompt.check_code == event.prompt.check_code
    assert len(joined.prompt.check_code.replace(" ", "")) == 6
    assert joined.prompt.account_fingerprint == phone.account_fingerprint()
    linked = device.consent(now)
    assert isinstance(linked, dl.DeviceEvent.LINKED)
    confirm, save, subscribe = drain(device)
    assert isinstance(save, dl.Output.SAVE) and isinstance(subscribe, dl.Output.SUBSCRIBE)
    done = phone.receive(confirm.message, now)
    assert done == dl.PhoneEvent.LINKED(token=token, index=linked.index)
    return linked.index


def test_a_phone_links_a_companion_in_process():
    phone = dl.Phone(NOW)
    device = dl.Device("Python desktop", NOW)
    index = link_in_process(phone, device)
    assert index == 1
    assert [d.label for d in phone.devices()] == ["Python desktop"]
    assert device.index() == 1
    assert device.account_fingerprint() == phone.account_fingerprint()


def test_errors_are_exceptions_carrying_their_class():
    phone = dl.Phone(NOW)
    device = dl.Device("tab", NOW)
    # A QR code met outside the phone's own "Link a device" screen.
    with pytest.raises(dl.DevicelinkError.Refused):
        phone.scan(device.offer_text(), NOW)
    with pytest.raises(dl.DevicelinkError.Malformed):
        phone.approve(b"not a token", NOW)
    with pytest.raises(dl.DevicelinkError.Malformed):
        dl.Device("", NOW)
    with pytest.raises(dl.DevicelinkError.Malformed):
        dl.Phone.restore(b"{}")
    # A forged Request changes nothing: the genuine one still links.
    drain(device)
    phone.open_link_intent(NOW)
    token = phone.scan(device.offer_text(), NOW)
    (hello,) = sent(drain(phone))
    device.receive(hello, NOW)
    (request,) = sent(drain(device))
    forged = bytearray(request)
    forged[-1] ^= 1
    with pytest.raises(dl.DevicelinkError.Unauthenticated):
        phone.receive(bytes(forged), NOW)
    assert drain(phone) == []
    assert isinstance(phone.receive(request, NOW), dl.PhoneEvent.PROMPT)
    phone.refuse(token, NOW)
    (refusal,) = sent(drain(phone))
    failed = device.receive(refusal, NOW)
    assert failed == dl.DeviceEvent.FAILED(reason="refused: the user declined on the phone")


def test_saved_state_comes_back_and_a_revocation_logs_out():
    phone = dl.Phone(NOW)
    device = dl.Device("tab", NOW)
    index = link_in_process(phone, device)
    phone = dl.Phone.restore(phone.save())
    republished = drain(phone)
    assert kinds(republished) == ["PUBLISH_LIST"]
    device = dl.Device.restore(device.save())
    assert isinstance(drain(device)[0], dl.Output.SUBSCRIBE)
    phone.revoke(index, NOW + 1000)
    (publish,) = drain(phone)
    out = device.receive_list(publish.bytes, NOW + 1000)
    assert out == dl.DeviceEvent.LOGGED_OUT(reason="revoked by the primary")


@pytest.fixture(scope="module")
def relay():
    binary = os.environ.get("DEVICELINK_RELAY_BIN")
    if not binary:
        pytest.fail("DEVICELINK_RELAY_BIN is not set (scripts/test_bindings.sh sets it)")
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        base = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            m = re.match(r"devicelink-relay listening on (ws://127\.0\.0\.1:\d+)", line)
            if m:
                base = m.group(1)
                break
        assert base, "the relay did not say where it listens"
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def carry(link, role, is_phone):
    """Carries every queued output of `role` over `link`."""
    while (o := role.poll_output()) is not None:
        if is_phone:
            await link.carry_phone(role, o)
        else:
            await link.carry_device(role, o)


async def next_inbound(link, kind):
    """The next inbound of `kind`, skipping others, within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = await link.next(1000)
        if isinstance(got, kind):
            return got
    raise AssertionError(f"no {kind.__name__} within 10 s")


async def link_through(base, phone, device):
    phone_link = await dl.RelayLink.connect(base, True)
    device_link = await dl.RelayLink.connect(base, False)
    now = lambda: int(time.time() * 1000)
    await carry(device_link, device, False)  # the offer's token
    phone.open_link_intent(now())
    token = phone.scan(device.offer_text(), now())
    await carry(phone_link, phone, True)  # the Hello
    hello = await next_inbound(device_link, dl.Inbound.MESSAGE)
    device.receive(hello.bytes, now())
    await carry(device_link, device, False)  # the Request
    request = await next_inbound(phone_link, dl.Inbound.MESSAGE)
    prompt = phone.receive(request.bytes, now())
    assert isinstance(prompt, dl.PhoneEvent.PROMPT)
    phone.approve(token, now())
    await carry(phone_link, phone, True)  # the list, the Grant
    grant = await next_inbound(device_link, dl.Inbound.MESSAGE)
    joined = device.receive(grant.bytes, now())
    assert joined.prompt.check_code == prompt.prompt.check_code
    device.consent(now())
    await carry(device_link, device, False)  # the Confirm, the Subscribe
    confirm = await next_inbound(phone_link, dl.Inbound.MESSAGE)
    linked = phone.receive(confirm.bytes, now())
    assert isinstance(linked, dl.PhoneEvent.LINKED)
    await carry(phone_link, phone, True)
    return phone_link, device_link, linked.index


def test_a_phone_links_a_companion_through_a_real_relay(relay):
    async def scenario():
        now = int(time.time() * 1000)
        phone = dl.Phone(now)
        device = dl.Device("Python over the relay", now)
        phone_link, device_link, index = await link_through(relay, phone, device)
        assert device.index() == index
        # The revocation reaches the companion as a pushed list.
        phone.revoke(index, int(time.time() * 1000))
        await carry(phone_link, phone, True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = await device_link.next(1000)
            if isinstance(got, dl.Inbound.LIST):
                try:
                    event = device.receive_list(got.bytes, int(time.time() * 1000))
                except dl.DevicelinkError:
                    continue  # the catch-up's copy of the held list
                if isinstance(event, dl.DeviceEvent.LOGGED_OUT):
                    return event
        raise AssertionError("the revocation never arrived")

    event = asyncio.run(scenario())
    assert event.reason == "revoked by the primary"


def test_a_python_phone_links_a_kotlin_companion(relay):
    """Across languages: the companion is the Kotlin binding on the JVM
    (devicelink-ffi/kotlin/LinkTest.kt, `device` mode), the phone is this
    Python process, both on the same relay."""
    command = os.environ.get("DEVICELINK_KOTLIN_DEVICE")
    if not command:
        pytest.fail("DEVICELINK_KOTLIN_DEVICE is not set (scripts/test_bindings.sh sets it)")
    kotlin = subprocess.Popen(
        command.split() + ["device", relay],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        offer = kotlin.stdout.readline().strip()
        assert offer.startswith("offer: DL:"), (offer, kotlin.stderr.read())
        offer = offer.removeprefix("offer: ")

        async def phone_side():
            now = lambda: int(time.time() * 1000)
            phone = dl.Phone(now())
            link = await dl.RelayLink.connect(relay, True)
            phone.open_link_intent(now())
            token = phone.scan(offer, now())
            await carry(link, phone, True)
            request = await next_inbound(link, dl.Inbound.MESSAGE)
            prompt = phone.receive(request.bytes, now())
            assert prompt.prompt.label == "Kotlin companion"
            phone.approve(token, now())
            await carry(link, phone, True)
            confirm = await next_inbound(link, dl.Inbound.MESSAGE)
            linked = phone.receive(confirm.bytes, now())
            return phone, prompt.prompt, linked

        phone, prompt, linked = asyncio.run(phone_side())
        assert isinstance(linked, dl.PhoneEvent.LINKED)
        out, err = kotlin.communicate(timeout=60)
        assert kotlin.returncode == 0, err
        lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        assert lines["check code"] == prompt.check_code
        assert lines["account"] == phone.account_fingerprint()
        assert f"linked as device #{linked.index}" in out
    finally:
        if kotlin.poll() is None:
            kotlin.kill()
