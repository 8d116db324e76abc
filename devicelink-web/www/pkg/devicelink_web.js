/**
 * The browser companion: shows the rotating QR code, speaks the relay's
 * frames over a WebSocket the page opens to `/v1/companion`, and, once
 * linked, holds its own keys and the account's signed device list.
 *
 * The page owns the socket and the clock: it calls `connected` when the
 * socket opens, sends every `takeFrame()`, hands every binary message to
 * `receive`, calls `poll` at `nextDeadline` (and every second for the
 * countdown), and stores `save()` whenever `needsSave` is true.
 */
export class WebCompanion {
    static __wrap(ptr) {
        const obj = Object.create(WebCompanion.prototype);
        obj.__wbg_ptr = ptr;
        WebCompanionFinalization.register(obj, obj.__wbg_ptr, obj);
        return obj;
    }
    __destroy_into_raw() {
        const ptr = this.__wbg_ptr;
        this.__wbg_ptr = 0;
        WebCompanionFinalization.unregister(this);
        return ptr;
    }
    free() {
        const ptr = this.__destroy_into_raw();
        wasm.__wbg_webcompanion_free(ptr, 0);
    }
    /**
     * The account's fingerprint (the phone shows the same), once linked.
     * @returns {string | undefined}
     */
    get accountFingerprint() {
        const ret = wasm.webcompanion_accountFingerprint(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * The six-digit check code once the phone granted ("012 345"): the
     * phone must show the same one.
     * @returns {string | undefined}
     */
    get checkCode() {
        const ret = wasm.webcompanion_checkCode(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * The socket to `/v1/companion` opened: queues the Identify (the same
     * client on every connection), then the offer's Register (a pairing
     * goes on over a new connection) or, once linked, the session's list
     * and the Subscribe.
     * @param {number} now_ms
     */
    connected(now_ms) {
        const ret = wasm.webcompanion_connected(this.__wbg_ptr, now_ms);
        if (ret[1]) {
            throw takeFromExternrefTable0(ret[0]);
        }
    }
    /**
     * The user agrees to join that account: the Confirm is queued and the
     * browser is linked.
     * @param {number} now_ms
     */
    consent(now_ms) {
        const ret = wasm.webcompanion_consent(this.__wbg_ptr, now_ms);
        if (ret[1]) {
            throw takeFromExternrefTable0(ret[0]);
        }
    }
    /**
     * The user does not agree: nothing is sent, the pairing ends.
     * @param {number} now_ms
     */
    decline(now_ms) {
        const ret = wasm.webcompanion_decline(this.__wbg_ptr, now_ms);
        if (ret[1]) {
            throw takeFromExternrefTable0(ret[0]);
        }
    }
    /**
     * This device's key fingerprint, once linked.
     * @returns {string | undefined}
     */
    get deviceFingerprint() {
        const ret = wasm.webcompanion_deviceFingerprint(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * This device's index (1 for the first companion), once linked.
     * @returns {number | undefined}
     */
    get deviceIndex() {
        const ret = wasm.webcompanion_deviceIndex(this.__wbg_ptr);
        return ret === Number.MAX_SAFE_INTEGER ? undefined : ret;
    }
    /**
     * This device's raw Ed25519 public key (32 bytes): the page checks
     * that the key store's key is this one.
     * @returns {Uint8Array}
     */
    get devicePublicKey() {
        const ret = wasm.webcompanion_devicePublicKey(this.__wbg_ptr);
        var v1 = getArrayU8FromWasm0(ret[0], ret[1]).slice();
        wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        return v1;
    }
    /**
     * The account's companions as its newest signed list names them.
     * @returns {WebDevice[]}
     */
    devices() {
        const ret = wasm.webcompanion_devices(this.__wbg_ptr);
        var v1 = getArrayJsValueFromWasm0(ret[0], ret[1]);
        wasm.__wbindgen_free(ret[0], ret[1] * 4, 4);
        return v1;
    }
    /**
     * Why the pairing failed, for people: one fixed sentence per class.
     * @returns {string | undefined}
     */
    get failure() {
        const ret = wasm.webcompanion_failure(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * The fingerprint of the account a granted link would join, while the
     * page asks its user (phase `awaiting-consent`).
     * @returns {string | undefined}
     */
    get joiningAccount() {
        const ret = wasm.webcompanion_joiningAccount(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * This device's label, once linked.
     * @returns {string | undefined}
     */
    get label() {
        const ret = wasm.webcompanion_label(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * When the lease ends unless the phone is heard from (Unix ms), while
     * linked.
     * @param {number} now_ms
     * @returns {number | undefined}
     */
    leaseExpiresAt(now_ms) {
        const ret = wasm.webcompanion_leaseExpiresAt(this.__wbg_ptr, now_ms);
        return ret[0] === 0 ? undefined : ret[1];
    }
    /**
     * "Link again" after a logout: a new pairing under the same name that
     * accepts only the account this browser was linked to, with a new
     * device key (`keyStore` as for the constructor).
     * @param {Uint8Array | number[] | null | undefined} key_store
     * @param {number} now_ms
     * @returns {WebCompanion | undefined}
     */
    linkAgain(key_store, now_ms) {
        const val2 = +now_ms;
        var ptr0 = isLikeNone(key_store) ? 0 : passArray8ToWasm0(key_store, wasm.__wbindgen_malloc);
        var len0 = WASM_VECTOR_LEN;
        const ret = wasm.webcompanion_linkAgain(this.__wbg_ptr, ptr0, len0, val2);
        if (ret[2]) {
            throw takeFromExternrefTable0(ret[1]);
        }
        return ret[0] === 0 ? undefined : WebCompanion.__wrap(ret[0]);
    }
    /**
     * Why this device is logged out, for people, if it is.
     * @param {number} now_ms
     * @returns {string | undefined}
     */
    logoutReason(now_ms) {
        const ret = wasm.webcompanion_logoutReason(this.__wbg_ptr, now_ms);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * Rotations before the display gives up (5 by default).
     * @returns {number}
     */
    get maxRotations() {
        const ret = wasm.webcompanion_maxRotations(this.__wbg_ptr);
        return ret >>> 0;
    }
    /**
     * Whether the session changed since the last `save()`.
     * @returns {boolean}
     */
    get needsSave() {
        const ret = wasm.webcompanion_needsSave(this.__wbg_ptr);
        return ret !== 0;
    }
    /**
     * A new companion called `label` ("Chromium on Linux") with a fresh
     * offer, using the browser's CSPRNG. `keyStore` is the raw 32-byte
     * public key of a non-extractable WebCrypto Ed25519 key pair that
     * signs what `toSign()` asks; without it (a browser with no Ed25519 in
     * WebCrypto) the companion makes its own identity key, which `save()`
     * then holds.
     * @param {string} label
     * @param {Uint8Array | number[] | null | undefined} key_store
     * @param {number} now_ms
     */
    constructor(label, key_store, now_ms) {
        const val3 = +now_ms;
        let ptr0, len0, ptr1, len1;
        try {
            ptr0 = passStringToWasm0(label, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
            len0 = WASM_VECTOR_LEN;
            ptr1 = isLikeNone(key_store) ? 0 : passArray8ToWasm0(key_store, wasm.__wbindgen_malloc);
            len1 = WASM_VECTOR_LEN;
        } catch (e) {
            if (ptr1) { wasm.__wbindgen_free(ptr1, len1 * 1, 1); }
            if (ptr0) { wasm.__wbindgen_free(ptr0, len0 * 1, 1); }
            throw e;
        }
        const ret = wasm.webcompanion_new(ptr0, len0, ptr1, len1, val3);
        if (ret[2]) {
            throw takeFromExternrefTable0(ret[1]);
        }
        this.__wbg_ptr = ret[0];
        WebCompanionFinalization.register(this, this.__wbg_ptr, this);
        return this;
    }
    /**
     * When `poll` must run next (Unix ms).
     * @returns {number | undefined}
     */
    get nextDeadline() {
        const ret = wasm.webcompanion_nextDeadline(this.__wbg_ptr);
        return ret[0] === 0 ? undefined : ret[1];
    }
    /**
     * When the code on screen goes stale (Unix ms).
     * @returns {number | undefined}
     */
    get offerExpiresAt() {
        const ret = wasm.webcompanion_offerExpiresAt(this.__wbg_ptr);
        return ret[0] === 0 ? undefined : ret[1];
    }
    /**
     * `"connecting"`, `"showing"`, `"awaiting-approval"`, `"linked"`,
     * `"expiring-soon"`, `"logged-out"` or `"failed"`.
     * @param {number} now_ms
     * @returns {string}
     */
    phase(now_ms) {
        let deferred1_0;
        let deferred1_1;
        try {
            const ret = wasm.webcompanion_phase(this.__wbg_ptr, now_ms);
            deferred1_0 = ret[0];
            deferred1_1 = ret[1];
            return getStringFromWasm0(ret[0], ret[1]);
        } finally {
            wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
        }
    }
    /**
     * Advances time (rotation, timeouts, the lease); true if the page
     * should redraw.
     * @param {number} now_ms
     * @returns {boolean}
     */
    poll(now_ms) {
        const ret = wasm.webcompanion_poll(this.__wbg_ptr, now_ms);
        return ret !== 0;
    }
    /**
     * The QR code on screen as an SVG document (328 px square).
     * @returns {string | undefined}
     */
    qrSvg() {
        const ret = wasm.webcompanion_qrSvg(this.__wbg_ptr);
        if (ret[3]) {
            throw takeFromExternrefTable0(ret[2]);
        }
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * The QR text on screen (`DL:…`), once the relay knows its token.
     * @returns {string | undefined}
     */
    get qrText() {
        const ret = wasm.webcompanion_qrText(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * Handles one binary message from the relay. Throws only for bytes
     * that are not a frame; a message the core refuses changes nothing.
     * @param {Uint8Array | number[]} frame
     * @param {number} now_ms
     */
    receive(frame, now_ms) {
        const val2 = +now_ms;
        const ptr0 = passArray8ToWasm0(frame, wasm.__wbindgen_malloc);
        const len0 = WASM_VECTOR_LEN;
        const ret = wasm.webcompanion_receive(this.__wbg_ptr, ptr0, len0, val2);
        if (ret[1]) {
            throw takeFromExternrefTable0(ret[0]);
        }
    }
    /**
     * Restores a linked companion from `save()`'s text.
     * @param {string} saved
     * @param {number} now_ms
     * @returns {WebCompanion}
     */
    static restore(saved, now_ms) {
        const val2 = +now_ms;
        const ptr0 = passStringToWasm0(saved, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
        const len0 = WASM_VECTOR_LEN;
        const ret = wasm.webcompanion_restore(ptr0, len0, val2);
        if (ret[2]) {
            throw takeFromExternrefTable0(ret[1]);
        }
        return WebCompanion.__wrap(ret[0]);
    }
    /**
     * The offer's rotation: 0 for the first code.
     * @returns {number | undefined}
     */
    get rotation() {
        const ret = wasm.webcompanion_rotation(this.__wbg_ptr);
        return ret === Number.MAX_SAFE_INTEGER ? undefined : ret;
    }
    /**
     * The state to keep across reloads, or `undefined` while pairing (a
     * reload then shows a new code). With a key store it holds only the
     * device's public key; without one it holds the identity key
     * (**secret**: keep it only in this origin's storage).
     * @returns {string | undefined}
     */
    save() {
        const ret = wasm.webcompanion_save(this.__wbg_ptr);
        if (ret[3]) {
            throw takeFromExternrefTable0(ret[2]);
        }
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * The key store's 64-byte signature over `toSign()`'s bytes; checked
     * under this device's key before it is used (a wrong one throws and
     * changes nothing).
     * @param {Uint8Array | number[]} signature
     */
    signed(signature) {
        const ptr0 = passArray8ToWasm0(signature, wasm.__wbindgen_malloc);
        const len0 = WASM_VECTOR_LEN;
        const ret = wasm.webcompanion_signed(this.__wbg_ptr, ptr0, len0);
        if (ret[1]) {
            throw takeFromExternrefTable0(ret[0]);
        }
    }
    /**
     * The next frame to send on the socket, or `undefined`.
     * @returns {Uint8Array | undefined}
     */
    takeFrame() {
        const ret = wasm.webcompanion_takeFrame(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getArrayU8FromWasm0(ret[0], ret[1]).slice();
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * What happened that the user should be told once.
     * @returns {WebNotice[]}
     */
    takeNotices() {
        const ret = wasm.webcompanion_takeNotices(this.__wbg_ptr);
        var v1 = getArrayJsValueFromWasm0(ret[0], ret[1]);
        wasm.__wbindgen_free(ret[0], ret[1] * 4, 4);
        return v1;
    }
    /**
     * The bytes the key store must sign now (Ed25519), or `undefined`:
     * the Confirm while the join prompt is shown (signing is not consent:
     * nothing is sent before `consent`), the subscription proof once
     * linked. Hand the signature to `signed`.
     * @returns {Uint8Array | undefined}
     */
    toSign() {
        const ret = wasm.webcompanion_toSign(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getArrayU8FromWasm0(ret[0], ret[1]).slice();
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * Whether the device key is the key store's (no secret in `save()`).
     * @returns {boolean}
     */
    get usesKeyStore() {
        const ret = wasm.webcompanion_usesKeyStore(this.__wbg_ptr);
        return ret !== 0;
    }
}
if (Symbol.dispose) WebCompanion.prototype[Symbol.dispose] = WebCompanion.prototype.free;

/**
 * One device of the account.
 */
export class WebDevice {
    static __wrap(ptr) {
        const obj = Object.create(WebDevice.prototype);
        obj.__wbg_ptr = ptr;
        WebDeviceFinalization.register(obj, obj.__wbg_ptr, obj);
        return obj;
    }
    __destroy_into_raw() {
        const ptr = this.__wbg_ptr;
        this.__wbg_ptr = 0;
        WebDeviceFinalization.unregister(this);
        return ptr;
    }
    free() {
        const ptr = this.__destroy_into_raw();
        wasm.__wbg_webdevice_free(ptr, 0);
    }
    /**
     * Its key fingerprint.
     * @returns {string}
     */
    get fingerprint() {
        let deferred1_0;
        let deferred1_1;
        try {
            const ret = wasm.webdevice_fingerprint(this.__wbg_ptr);
            deferred1_0 = ret[0];
            deferred1_1 = ret[1];
            return getStringFromWasm0(ret[0], ret[1]);
        } finally {
            wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
        }
    }
    /**
     * Its index in the account.
     * @returns {number}
     */
    get index() {
        const ret = wasm.webdevice_index(this.__wbg_ptr);
        return ret >>> 0;
    }
    /**
     * Its label (chosen by that device: show it as text, never as HTML).
     * @returns {string}
     */
    get label() {
        let deferred1_0;
        let deferred1_1;
        try {
            const ret = wasm.webdevice_label(this.__wbg_ptr);
            deferred1_0 = ret[0];
            deferred1_1 = ret[1];
            return getStringFromWasm0(ret[0], ret[1]);
        } finally {
            wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
        }
    }
    /**
     * When the phone linked it (Unix ms, the phone's clock).
     * @returns {number}
     */
    get linkedAt() {
        const ret = wasm.webdevice_linkedAt(this.__wbg_ptr);
        return ret;
    }
    /**
     * Whether it is this browser.
     * @returns {boolean}
     */
    get thisDevice() {
        const ret = wasm.webdevice_thisDevice(this.__wbg_ptr);
        return ret !== 0;
    }
}
if (Symbol.dispose) WebDevice.prototype[Symbol.dispose] = WebDevice.prototype.free;

/**
 * Something to tell the user once.
 */
export class WebNotice {
    static __wrap(ptr) {
        const obj = Object.create(WebNotice.prototype);
        obj.__wbg_ptr = ptr;
        WebNoticeFinalization.register(obj, obj.__wbg_ptr, obj);
        return obj;
    }
    __destroy_into_raw() {
        const ptr = this.__wbg_ptr;
        this.__wbg_ptr = 0;
        WebNoticeFinalization.unregister(this);
        return ptr;
    }
    free() {
        const ptr = this.__destroy_into_raw();
        wasm.__wbg_webnotice_free(ptr, 0);
    }
    /**
     * `"device-added"`, `"device-removed"`, `"relay-error"` or
     * `"relay-logout"`.
     * @returns {string}
     */
    get kind() {
        let deferred1_0;
        let deferred1_1;
        try {
            const ret = wasm.webnotice_kind(this.__wbg_ptr);
            deferred1_0 = ret[0];
            deferred1_1 = ret[1];
            return getStringFromWasm0(ret[0], ret[1]);
        } finally {
            wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
        }
    }
    /**
     * A relay refusal's class (`"relay-refused"`, `"phone-not-connected"`
     * …), or `undefined` for the other kinds.
     * @returns {string | undefined}
     */
    get problem() {
        const ret = wasm.webnotice_problem(this.__wbg_ptr);
        let v1;
        if (ret[0] !== 0) {
            v1 = getStringFromWasm0(ret[0], ret[1]);
            wasm.__wbindgen_free(ret[0], ret[1] * 1, 1);
        }
        return v1;
    }
    /**
     * The words to show (as text, never as HTML: it quotes labels). A
     * relay refusal is its class's fixed sentence, never the relay's text.
     * @returns {string}
     */
    get text() {
        let deferred1_0;
        let deferred1_1;
        try {
            const ret = wasm.webnotice_text(this.__wbg_ptr);
            deferred1_0 = ret[0];
            deferred1_1 = ret[1];
            return getStringFromWasm0(ret[0], ret[1]);
        } finally {
            wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
        }
    }
}
if (Symbol.dispose) WebNotice.prototype[Symbol.dispose] = WebNotice.prototype.free;
function __wbg_get_imports() {
    const import0 = {
        __proto__: null,
        __wbg_Error_208446807d0d1e30: function(arg0, arg1) {
            const ret = Error(getStringFromWasm0(arg0, arg1));
            return ret;
        },
        __wbg___wbindgen_is_function_741ff2bb612836f5: function(arg0) {
            const ret = typeof(arg0) === 'function';
            return ret;
        },
        __wbg___wbindgen_is_object_8b968c3ab8e96595: function(arg0) {
            const val = arg0;
            const ret = typeof(val) === 'object' && val !== null;
            return ret;
        },
        __wbg___wbindgen_is_string_fc456fee5d3317de: function(arg0) {
            const ret = typeof(arg0) === 'string';
            return ret;
        },
        __wbg___wbindgen_is_undefined_be5b34249ff1fc15: function(arg0) {
            const ret = arg0 === undefined;
            return ret;
        },
        __wbg___wbindgen_throw_4c88d8bf264fd984: function(arg0, arg1) {
            throw new Error(getStringFromWasm0(arg0, arg1));
        },
        __wbg_call_a410eb4b59ed5965: function() { return handleError(function (arg0, arg1, arg2) {
            const ret = arg0.call(arg1, arg2);
            return ret;
        }, arguments); },
        __wbg_crypto_23f565a907d30078: function(arg0) {
            const ret = arg0.crypto;
            return ret;
        },
        __wbg_getRandomValues_d2908e0b99612b91: function() { return handleError(function (arg0, arg1) {
            arg0.getRandomValues(arg1);
        }, arguments); },
        __wbg_length_186163212ffe79c3: function(arg0) {
            const ret = arg0.length;
            return ret;
        },
        __wbg_msCrypto_d5f06fad6bf1409b: function(arg0) {
            const ret = arg0.msCrypto;
            return ret;
        },
        __wbg_new_with_length_01b143a7e5dd5a3e: function(arg0) {
            const ret = new Uint8Array(arg0 >>> 0);
            return ret;
        },
        __wbg_node_86166ff8ce1f2002: function(arg0) {
            const ret = arg0.node;
            return ret;
        },
        __wbg_process_91f425a63f58e399: function(arg0) {
            const ret = arg0.process;
            return ret;
        },
        __wbg_prototypesetcall_13162965d1fe7aa3: function(arg0, arg1, arg2) {
            Uint8Array.prototype.set.call(getArrayU8FromWasm0(arg0, arg1), arg2);
        },
        __wbg_randomFillSync_34b023059e3363de: function() { return handleError(function (arg0, arg1) {
            arg0.randomFillSync(arg1);
        }, arguments); },
        __wbg_require_9a7d8cc2e1d275c0: function() { return handleError(function () {
            const ret = module.require;
            return ret;
        }, arguments); },
        __wbg_static_accessor_GLOBAL_THIS_003ee833af9699fc: function() {
            const ret = typeof globalThis === 'undefined' ? undefined : globalThis;
            return isLikeNone(ret) ? 0 : addToExternrefTable0(ret);
        },
        __wbg_static_accessor_GLOBAL_e4293fb22cbe77da: function() {
            const ret = typeof global === 'undefined' ? undefined : global;
            return isLikeNone(ret) ? 0 : addToExternrefTable0(ret);
        },
        __wbg_static_accessor_SELF_53bb20457401453d: function() {
            const ret = typeof self === 'undefined' ? undefined : self;
            return isLikeNone(ret) ? 0 : addToExternrefTable0(ret);
        },
        __wbg_static_accessor_WINDOW_b5e0810bfecb7feb: function() {
            const ret = typeof window === 'undefined' ? undefined : window;
            return isLikeNone(ret) ? 0 : addToExternrefTable0(ret);
        },
        __wbg_subarray_58f388a9247ac0bb: function(arg0, arg1, arg2) {
            const ret = arg0.subarray(arg1 >>> 0, arg2 >>> 0);
            return ret;
        },
        __wbg_versions_6e128a981b0df859: function(arg0) {
            const ret = arg0.versions;
            return ret;
        },
        __wbg_webdevice_new: function(arg0) {
            const ret = WebDevice.__wrap(arg0);
            return ret;
        },
        __wbg_webnotice_new: function(arg0) {
            const ret = WebNotice.__wrap(arg0);
            return ret;
        },
        __wbindgen_generic_0000000000000001: function(arg0, arg1) {
            // Cast intrinsic for `Ref(Slice(U8)) -> NamedExternref("Uint8Array")`.
            const ret = getArrayU8FromWasm0(arg0, arg1);
            return ret;
        },
        __wbindgen_generic_0000000000000002: function(arg0, arg1) {
            // Cast intrinsic for `Ref(String) -> Externref`.
            const ret = getStringFromWasm0(arg0, arg1);
            return ret;
        },
        __wbindgen_init_externref_table: function() {
            const table = wasm.__wbindgen_externrefs;
            table.set(0, undefined);
            table.set(1024, undefined);
            table.set(1025, null);
            table.set(1026, true);
            table.set(1027, false);
        },
    };
    return {
        __proto__: null,
        "./devicelink_web_bg.js": import0,
    };
}

const WebCompanionFinalization = (typeof FinalizationRegistry === 'undefined')
    ? { register: () => {}, unregister: () => {} }
    : new FinalizationRegistry(ptr => wasm.__wbg_webcompanion_free(ptr, 1));
const WebDeviceFinalization = (typeof FinalizationRegistry === 'undefined')
    ? { register: () => {}, unregister: () => {} }
    : new FinalizationRegistry(ptr => wasm.__wbg_webdevice_free(ptr, 1));
const WebNoticeFinalization = (typeof FinalizationRegistry === 'undefined')
    ? { register: () => {}, unregister: () => {} }
    : new FinalizationRegistry(ptr => wasm.__wbg_webnotice_free(ptr, 1));

function addToExternrefTable0(obj) {
    const idx = wasm.__externref_table_alloc();
    wasm.__wbindgen_externrefs.set(idx, obj);
    return idx;
}

function getArrayJsValueFromWasm0(ptr, len) {
    ptr = ptr >>> 0;
    const mem = getDataViewMemory0();
    const result = [];
    for (let i = ptr; i < ptr + 4 * len; i += 4) {
        result.push(wasm.__wbindgen_externrefs.get(mem.getUint32(i, true)));
    }
    wasm.__externref_drop_slice(ptr, len);
    return result;
}

function getArrayU8FromWasm0(ptr, len) {
    ptr = ptr >>> 0;
    return getUint8ArrayMemory0().subarray(ptr / 1, ptr / 1 + len);
}

let cachedDataViewMemory0 = null;
function getDataViewMemory0() {
    if (cachedDataViewMemory0 === null || cachedDataViewMemory0.buffer.detached === true || (cachedDataViewMemory0.buffer.detached === undefined && cachedDataViewMemory0.buffer !== wasm.memory.buffer)) {
        cachedDataViewMemory0 = new DataView(wasm.memory.buffer);
    }
    return cachedDataViewMemory0;
}

function getStringFromWasm0(ptr, len) {
    ptr = ptr >>> 0;
    return decodeText(getUint8ArrayMemory0().subarray(ptr, ptr + len));
}

let cachedUint8ArrayMemory0 = null;
function getUint8ArrayMemory0() {
    if (cachedUint8ArrayMemory0 === null || cachedUint8ArrayMemory0.byteLength === 0) {
        cachedUint8ArrayMemory0 = new Uint8Array(wasm.memory.buffer);
    }
    return cachedUint8ArrayMemory0;
}

function handleError(f, args) {
    try {
        return f.apply(this, args);
    } catch (e) {
        const idx = addToExternrefTable0(e);
        wasm.__wbindgen_exn_store(idx);
    }
}

function isLikeNone(x) {
    return x === undefined || x === null;
}

function passArray8ToWasm0(arg, malloc) {
    const ptr = malloc(arg.length * 1, 1) >>> 0;
    getUint8ArrayMemory0().set(arg, ptr / 1);
    WASM_VECTOR_LEN = arg.length;
    return ptr;
}

function passStringToWasm0(arg, malloc, realloc) {
    if (realloc === undefined) {
        const buf = cachedTextEncoder.encode(arg);
        const ptr = malloc(buf.length, 1) >>> 0;
        getUint8ArrayMemory0().subarray(ptr, ptr + buf.length).set(buf);
        WASM_VECTOR_LEN = buf.length;
        return ptr;
    }

    let len = arg.length;
    let ptr = malloc(len, 1) >>> 0;

    const mem = getUint8ArrayMemory0();

    let offset = 0;

    for (; offset < len; offset++) {
        const code = arg.charCodeAt(offset);
        if (code > 0x7F) break;
        mem[ptr + offset] = code;
    }
    if (offset !== len) {
        if (offset !== 0) {
            arg = arg.slice(offset);
        }
        ptr = realloc(ptr, len, len = offset + arg.length * 3, 1) >>> 0;
        const view = getUint8ArrayMemory0().subarray(ptr + offset, ptr + len);
        const ret = cachedTextEncoder.encodeInto(arg, view);

        offset += ret.written;
        ptr = realloc(ptr, len, offset, 1) >>> 0;
    }

    WASM_VECTOR_LEN = offset;
    return ptr;
}

function takeFromExternrefTable0(idx) {
    const value = wasm.__wbindgen_externrefs.get(idx);
    wasm.__externref_table_dealloc(idx);
    return value;
}

let cachedTextDecoder = new TextDecoder('utf-8', { ignoreBOM: true });
cachedTextDecoder.decode();
const MAX_SAFARI_DECODE_BYTES = 2146435072;
let numBytesDecoded = 0;
function decodeText(bytes) {
    numBytesDecoded += bytes.length;
    if (numBytesDecoded >= MAX_SAFARI_DECODE_BYTES) {
        cachedTextDecoder = new TextDecoder('utf-8', { ignoreBOM: true });
        cachedTextDecoder.decode();
        numBytesDecoded = bytes.length;
    }
    return cachedTextDecoder.decode(bytes);
}

const cachedTextEncoder = new TextEncoder();

if (!('encodeInto' in cachedTextEncoder)) {
    cachedTextEncoder.encodeInto = function (arg, view) {
        const buf = cachedTextEncoder.encode(arg);
        view.set(buf);
        return {
            read: arg.length,
            written: buf.length
        };
    };
}

let WASM_VECTOR_LEN = 0;

let wasmModule, wasmInstance, wasm;
function __wbg_finalize_init(instance, module) {
    wasmInstance = instance;
    wasm = instance.exports;
    wasmModule = module;
    cachedDataViewMemory0 = null;
    cachedUint8ArrayMemory0 = null;
    wasm.__wbindgen_start();
    return wasm;
}

async function __wbg_load(module, imports) {
    if (typeof Response === 'function' && module instanceof Response) {
        if (!module.ok) {
            throw new Error(`failed to fetch Wasm: ${module.status} ${module.statusText} fetching '${module.url}'`);
        }

        if (typeof WebAssembly.instantiateStreaming === 'function') {
            try {
                return await WebAssembly.instantiateStreaming(module, imports);
            } catch (e) {
                const validResponse = expectedResponseType(module.type);

                if (validResponse && module.headers.get('Content-Type') !== 'application/wasm') {
                    console.warn("`WebAssembly.instantiateStreaming` failed because your server does not serve Wasm with `application/wasm` MIME type. Falling back to `WebAssembly.instantiate` which is slower. Original error:\n", e);

                } else { throw e; }
            }
        }

        const bytes = await module.arrayBuffer();
        return await WebAssembly.instantiate(bytes, imports);
    } else {
        const instance = await WebAssembly.instantiate(module, imports);

        if (instance instanceof WebAssembly.Instance) {
            return { instance, module };
        } else {
            return instance;
        }
    }

    function expectedResponseType(type) {
        switch (type) {
            case 'basic': case 'cors': case 'default': return true;
        }
        return false;
    }
}

function initSync(module) {
    if (wasm !== undefined) return wasm;


    if (module !== undefined) {
        if (Object.getPrototypeOf(module) === Object.prototype) {
            ({module} = module)
        } else {
            console.warn('using deprecated parameters for `initSync()`; pass a single object instead')
        }
    }

    const imports = __wbg_get_imports();
    if (!(module instanceof WebAssembly.Module)) {
        module = new WebAssembly.Module(module);
    }
    const instance = new WebAssembly.Instance(module, imports);
    return __wbg_finalize_init(instance, module);
}

let __wbg_init_promise;
async function __wbg_init(module_or_path) {
    if (wasm !== undefined) return wasm;
    if (__wbg_init_promise === undefined) {
        __wbg_init_promise = __wbg_init_once(module_or_path);
        __wbg_init_promise.catch(() => { __wbg_init_promise = undefined; });
    }
    return __wbg_init_promise;
}

async function __wbg_init_once(module_or_path) {

    if (module_or_path !== undefined) {
        if (Object.getPrototypeOf(module_or_path) === Object.prototype) {
            ({module_or_path} = module_or_path)
        } else {
            console.warn('using deprecated parameters for the initialization function; pass a single object instead')
        }
    }

    if (module_or_path === undefined) {
        module_or_path = new URL('devicelink_web_bg.wasm', import.meta.url);
    }
    const imports = __wbg_get_imports();

    if (typeof module_or_path === 'string' || (typeof Request === 'function' && module_or_path instanceof Request) || (typeof URL === 'function' && module_or_path instanceof URL)) {
        module_or_path = fetch(module_or_path);
    }

    const { instance, module } = await __wbg_load(await module_or_path, imports);

    return __wbg_finalize_init(instance, module);
}

export { initSync, __wbg_init as default };
