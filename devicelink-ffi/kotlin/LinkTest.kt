// The Kotlin binding (UniFFI) on the JVM: a phone and a companion linked
// in process and through a real devicelink-relay process, errors as
// exceptions carrying their class. Run by scripts/test_bindings.sh, which
// passes the relay's address as the first argument. Prints one line per
// test and, last, "kotlin: N passed".

import kotlinx.coroutines.runBlocking
import uniffi.devicelink.*

const val NOW: ULong = 1_700_000_000_000uL

fun drainPhone(p: Phone): List<Output> = generateSequence { p.pollOutput() }.toList()
fun drainDevice(d: Device): List<Output> = generateSequence { d.pollOutput() }.toList()
fun sent(outputs: List<Output>): List<ByteArray> = outputs.filterIsInstance<Output.Send>().map { it.message }
fun nowMs(): ULong = System.currentTimeMillis().toULong()

fun linkInProcess(phone: Phone, device: Device): UInt {
    check(drainDevice(device).first() is Output.Register) { "the token is registered first" }
    phone.openLinkIntent(NOW)
    val token = phone.scan(device.offerText()!!, NOW)
    val hello = sent(drainPhone(phone)).single()
    check(device.receive(hello, NOW) is DeviceEvent.Accepted)
    val request = sent(drainDevice(device)).single()
    val prompt = phone.receive(request, NOW) as PhoneEvent.Prompt
    check(prompt.prompt.token.contentEquals(token))
    phone.approve(token, NOW)
    val outputs = drainPhone(phone)
    check(outputs[0] is Output.Save && outputs[1] is Output.PublishList && outputs[2] is Output.Send) { "$outputs" }
    val joined = device.receive(sent(outputs).single(), NOW) as DeviceEvent.Prompt
    check(joined.prompt.checkCode == prompt.prompt.checkCode) { "the same check code" }
    check(joined.prompt.accountFingerprint == phone.accountFingerprint())
    val linked = device.consent(NOW) as DeviceEvent.Linked
    val confirm = sent(drainDevice(device)).single()
    val done = phone.receive(confirm, NOW) as PhoneEvent.Linked
    check(done.index == linked.index)
    return linked.index
}

fun inProcess() {
    val phone = Phone(NOW)
    val device = Device("Kotlin desktop", NOW)
    check(linkInProcess(phone, device) == 1u)
    check(phone.devices().map { it.label } == listOf("Kotlin desktop"))
    // Saved and restored, then revoked: the device hears it from the list.
    val restored = Phone.restore(phone.save())
    val republished = drainPhone(restored)
    check(republished.single() is Output.PublishList)
    restored.revoke(1u, NOW + 1000uL)
    val list = drainPhone(restored).single() as Output.PublishList
    val out = device.receiveList(list.bytes, NOW + 1000uL) as DeviceEvent.LoggedOut
    check(out.reason == "revoked by the primary") { out.reason }
}

fun errors() {
    val phone = Phone(NOW)
    val device = Device("tab", NOW)
    val refused = runCatching { phone.scan(device.offerText()!!, NOW) }.exceptionOrNull()
    check(refused is DevicelinkException.Refused) { "no link intent: $refused" }
    val malformed = runCatching { phone.approve(byteArrayOf(1, 2, 3), NOW) }.exceptionOrNull()
    check(malformed is DevicelinkException.Malformed) { "a short token: $malformed" }
    val badLabel = runCatching { Device("", NOW) }.exceptionOrNull()
    check(badLabel is DevicelinkException.Malformed) { "an empty label: $badLabel" }
}

suspend fun carryPhone(link: RelayLink, p: Phone) {
    while (true) link.carryPhone(p, p.pollOutput() ?: return)
}

suspend fun carryDevice(link: RelayLink, d: Device) {
    while (true) link.carryDevice(d, d.pollOutput() ?: return)
}

suspend fun nextMessage(link: RelayLink): ByteArray {
    repeat(10) {
        val got = link.next(1000uL)
        if (got is Inbound.Message) return got.bytes
    }
    error("no message within 10 s")
}

fun throughRelay(base: String) = runBlocking {
    val phone = Phone(nowMs())
    val device = Device("Kotlin over the relay", nowMs())
    val phoneLink = RelayLink.connect(base, true)
    val deviceLink = RelayLink.connect(base, false)
    carryDevice(deviceLink, device)
    phone.openLinkIntent(nowMs())
    val token = phone.scan(device.offerText()!!, nowMs())
    carryPhone(phoneLink, phone)
    device.receive(nextMessage(deviceLink), nowMs())
    carryDevice(deviceLink, device)
    val prompt = phone.receive(nextMessage(phoneLink), nowMs()) as PhoneEvent.Prompt
    phone.approve(token, nowMs())
    carryPhone(phoneLink, phone)
    val joined = device.receive(nextMessage(deviceLink), nowMs()) as DeviceEvent.Prompt
    check(joined.prompt.checkCode == prompt.prompt.checkCode)
    device.consent(nowMs())
    carryDevice(deviceLink, device)
    val linked = phone.receive(nextMessage(phoneLink), nowMs()) as PhoneEvent.Linked
    check(device.index() == linked.index)
    // The revocation reaches the companion as a pushed list.
    phone.revoke(linked.index, nowMs())
    carryPhone(phoneLink, phone)
    repeat(10) {
        val got = deviceLink.next(1000uL)
        if (got is Inbound.List) {
            val event = runCatching { device.receiveList(got.bytes, nowMs()) }.getOrNull()
            if (event is DeviceEvent.LoggedOut) return@runBlocking
        }
    }
    error("the revocation never arrived")
}

/** The companion side of the cross-language test: a Kotlin device shows its
 * QR text on stdout, and whichever phone scans it (the Python test's) links
 * it; its user agrees when the check code is shown. */
fun deviceForAnotherLanguage(base: String) = runBlocking {
    val device = Device("Kotlin companion", nowMs())
    val link = RelayLink.connect(base, false)
    carryDevice(link, device)
    println("offer: ${device.offerText()}")
    while (true) {
        val got = link.next(30_000uL) ?: error("nothing from the phone within 30 s")
        if (got !is Inbound.Message) continue
        when (val event = device.receive(got.bytes, nowMs())) {
            is DeviceEvent.Prompt -> {
                println("check code: ${event.prompt.checkCode}")
                println("account: ${event.prompt.accountFingerprint}")
                val linked = device.consent(nowMs()) as DeviceEvent.Linked
                carryDevice(link, device)
                println("linked as device #${linked.index}")
                return@runBlocking
            }
            else -> carryDevice(link, device)
        }
    }
}

/** The Kotlin side of the bindings bench (scripts/bindings_bench.sh): N
 * whole links in process, the same steps as examples/link_bench.rs. */
fun untilSend(next: () -> Output?): ByteArray {
    while (true) {
        when (val o = next()) {
            is Output.Send -> return o.message
            null -> error("expected a message")
            else -> {}
        }
    }
}

fun benchLink(): Boolean {
    val phone = Phone(NOW)
    val device = Device("bench", NOW)
    while (device.pollOutput() != null) {}
    phone.openLinkIntent(NOW)
    val token = phone.scan(device.offerText()!!, NOW)
    device.receive(untilSend { phone.pollOutput() }, NOW)
    phone.receive(untilSend { device.pollOutput() }, NOW)
    phone.approve(token, NOW)
    device.receive(untilSend { phone.pollOutput() }, NOW)
    device.consent(NOW)
    val linked = phone.receive(untilSend { device.pollOutput() }, NOW)
    while (phone.pollOutput() != null) {}
    while (device.pollOutput() != null) {}
    phone.close()
    device.close()
    return linked is PhoneEvent.Linked
}

fun bench(n: Int) {
    repeat(10) { benchLink() }
    val start = System.nanoTime()
    repeat(n) { check(benchLink()) { "a link failed" } }
    val ms = (System.nanoTime() - start) / 1e6
    println("kotlin: $n links in ${"%.1f".format(ms)} ms")
}

fun main(args: Array<String>) {
    if (args.getOrNull(0) == "bench") {
        bench(args.getOrNull(1)?.toInt() ?: 200)
        return
    }
    if (args.getOrNull(0) == "device") {
        deviceForAnotherLanguage(args.getOrNull(1) ?: error("usage: LinkTest device ws://relay"))
        return
    }
    val base = args.getOrNull(0) ?: error("usage: LinkTest ws://relay")
    val tests = listOf(
        "a phone links a companion in process" to { inProcess() },
        "errors are exceptions carrying their class" to { errors() },
        "a phone links a companion through a real relay" to { throughRelay(base) },
    )
    var passed = 0
    for ((name, test) in tests) {
        test()
        println("ok: $name")
        passed++
    }
    println("kotlin: $passed passed")
}
