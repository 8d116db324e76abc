//! UniFFI's binding generator, at this crate's UniFFI version.
fn main() {
    uniffi::uniffi_bindgen_main()
}
