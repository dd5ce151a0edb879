//! The C ABI of the request-body scan (crate::body). The scanner lives in
//! memory the caller provides (as zstd's static contexts do), so nginx
//! takes it from a request pool and nothing here allocates.

use std::ffi::c_void;

use super::{any_bytes, body_status, guard, tg_status, TG_E_BUFFER_TOO_SMALL};
use super::{sized, TG_E_INVALID, TG_E_NULL, TG_OK};
use crate::body::{model_of, ModelScanner, DEPTH_MAX, MODEL_MAX};

/// Most bytes of the decoded model a body scan keeps; longer values are cut
/// there, on a character boundary (they exceed TG_MODEL_NAME_MAX, so they
/// are an unknown model for every policy). A model buffer of this many
/// bytes always suffices.
pub const TG_BODY_MODEL_MAX: u32 = 64;
/// Most nesting levels a body may have (the top-level object is level 1);
/// deeper is TG_E_BODY_TOO_DEEP.
pub const TG_BODY_DEPTH_MAX: u32 = 1024;
/// Alignment the memory given to tg_body_scan_init must have.
pub const TG_BODY_SCAN_ALIGN: u32 = 8;

/// A streaming scan of one request body (opaque), in caller memory of
/// tg_body_scan_size() bytes. Fixed size: no allocation whatever the body.
/// One thread at a time.
pub struct tg_body_scan {
    inner: ModelScanner,
}

// Literals above, for cbindgen; they are the scanner's own bounds.
const _: () = assert!(TG_BODY_MODEL_MAX as usize == MODEL_MAX);
const _: () = assert!(TG_BODY_DEPTH_MAX as usize == DEPTH_MAX);
// The C side is promised 8-byte alignment and no more.
const _: () = assert!(std::mem::align_of::<tg_body_scan>() <= TG_BODY_SCAN_ALIGN as usize);

/// Bytes of memory tg_body_scan_init needs (aligned to TG_BODY_SCAN_ALIGN).
#[no_mangle]
pub extern "C" fn tg_body_scan_size() -> usize {
    std::mem::size_of::<tg_body_scan>()
}

/// Starts a scan in `len` bytes at `mem` (at least tg_body_scan_size(),
/// aligned to TG_BODY_SCAN_ALIGN) and sets `*out` to it (it is `mem`). The
/// memory stays the caller's: there is nothing to free, and init may be
/// called on it again for the next body. TG_E_NULL for NULL pointers,
/// TG_E_INVALID when `len` is too small, TG_E_ALIGNMENT when `mem` is not
/// aligned; `*out` is then NULL.
#[no_mangle]
pub extern "C" fn tg_body_scan_init(
    mem: *mut c_void,
    len: usize,
    out: *mut *mut tg_body_scan,
) -> tg_status {
    guard(|| {
        super::place(mem, len, out, || {
            Ok(tg_body_scan {
                inner: ModelScanner::new(),
            })
        })
    })
}

/// Scans the next `len` bytes of the body (`chunk` may be NULL when `len`
/// is 0). Chunks may be of any size and split the body anywhere. TG_OK:
/// keep feeding. A TG_E_BODY_* status: the body is refused already
/// (TG_E_BODY_NOT_JSON or TG_E_BODY_TOO_DEEP), and every later feed or
/// finish returns the same status.
#[no_mangle]
pub extern "C" fn tg_body_scan_feed(
    scan: *mut tg_body_scan,
    chunk: *const u8,
    len: usize,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a scan made by tg_body_scan_init, used by no
        // other call while this one runs.
        let Some(s) = (unsafe { scan.as_mut() }) else {
            return TG_E_NULL;
        };
        let bytes = match any_bytes(chunk.cast(), len) {
            Ok(b) => b,
            Err(st) => return st,
        };
        match s.inner.feed(bytes) {
            Ok(()) => TG_OK,
            Err(e) => body_status(e),
        }
    })
}

/// The body has ended. TG_OK: `*model` points at the decoded model value
/// (UTF-8, not NUL-terminated, at most TG_BODY_MODEL_MAX bytes) inside the
/// scan's memory, valid until that memory is initialised again or freed;
/// `*model_len` is its length. Otherwise a TG_E_BODY_* status says why the
/// body is refused, and `*model` is NULL, `*model_len` 0. May be called
/// again: it answers the same.
#[no_mangle]
pub extern "C" fn tg_body_scan_finish(
    scan: *mut tg_body_scan,
    model: *mut *const u8,
    model_len: *mut usize,
) -> tg_status {
    guard(|| {
        if model.is_null() || model_len.is_null() {
            return TG_E_NULL;
        }
        // SAFETY: non-null, writable by contract.
        unsafe {
            *model = std::ptr::null();
            *model_len = 0;
        }
        // SAFETY: NULL or a scan made by tg_body_scan_init, used by no
        // other call while this one runs.
        let Some(s) = (unsafe { scan.as_mut() }) else {
            return TG_E_NULL;
        };
        match s.inner.finish() {
            Ok(m) => {
                // SAFETY: non-null, writable by contract.
                unsafe {
                    *model = m.as_ptr();
                    *model_len = m.len();
                }
                TG_OK
            }
            Err(e) => body_status(e),
        }
    })
}

/// What the token estimate needs from a scanned body (docs/bodies.md,
/// "Token estimate facts"), written by tg_body_facts. A struct that grows
/// (see "Structs that grow").
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct tg_body_scan_facts {
    /// sizeof(tg_body_scan_facts) as the caller's header has it, or 0 (this
    /// first layout); tg_body_facts leaves it as it is.
    pub size: u32,
    /// How many string values are base64 media (saturating).
    pub media_items: u32,
    /// Bytes of the whole body.
    pub bytes: u64,
    /// Raw bytes (between the quotes, as written) of those media strings:
    /// a `data:` URL with a base64 payload of at least 256 bytes, or at
    /// least 1024 bytes of nothing but base64 alphabet.
    pub media_bytes: u64,
    /// 1 if `max_output` holds the client's output cap, 0 if it asked for
    /// none.
    pub has_max_output: u32,
    /// Zero.
    pub _reserved: u32,
    /// The largest non-negative integer value of the top-level keys
    /// `max_tokens`, `max_completion_tokens` and `max_output_tokens` (the
    /// model key's rule: escapes decoded, ASCII case folded), saturating
    /// at UINT64_MAX; 0 when `has_max_output` is 0.
    pub max_output: u64,
}

/// The facts the token estimate needs (tg_body_scan_facts) of a body whose
/// scan tg_body_scan_finish ended with TG_OK; they live in the scan's
/// memory until it is initialised again, and this copies them to `*out`.
/// Set `out->size` first (sizeof, or 0). TG_E_NULL for NULL pointers;
/// TG_E_INVALID when the scan has not finished with TG_OK (not finished
/// yet, or the body was refused: there is no estimate to make) or when
/// `out->size` is smaller than this first layout. On TG_E_INVALID for the
/// scan, `*out` is zeroed but for `size`; for a bad `size` it is not
/// touched.
#[no_mangle]
pub extern "C" fn tg_body_facts(
    scan: *const tg_body_scan,
    out: *mut tg_body_scan_facts,
) -> tg_status {
    guard(|| {
        // SAFETY: NULL or a scan made by tg_body_scan_init, not written by
        // another call while this one runs; NULL or the caller's writable
        // struct.
        let (Some(s), Some(out)) = (unsafe { scan.as_ref() }, unsafe { out.as_mut() }) else {
            return TG_E_NULL;
        };
        if !sized::<tg_body_scan_facts>(out.size) {
            return TG_E_INVALID;
        }
        let size = out.size;
        if !s.inner.finished() {
            *out = tg_body_scan_facts {
                size,
                ..Default::default()
            };
            return TG_E_INVALID;
        }
        let f = s.inner.facts();
        *out = tg_body_scan_facts {
            size,
            media_items: f.media_items,
            bytes: f.bytes,
            media_bytes: f.media_bytes,
            has_max_output: f.max_output.is_some() as u32,
            _reserved: 0,
            max_output: f.max_output.unwrap_or(0),
        };
        TG_OK
    })
}

/// The model of a whole body of `len` bytes at `body` in one call (no
/// scan memory needed). TG_OK: the decoded model is copied to `model_out`
/// (`cap` bytes; a NUL follows when room remains, not counted) and
/// `*model_len` is its length. TG_E_BUFFER_TOO_SMALL: `*model_len` is the
/// length needed (a `cap` of TG_BODY_MODEL_MAX always suffices). A
/// TG_E_BODY_* status: the body is refused, `*model_len` is 0.
#[no_mangle]
pub extern "C" fn tg_body_model(
    body: *const u8,
    len: usize,
    model_out: *mut u8,
    cap: usize,
    model_len: *mut usize,
) -> tg_status {
    guard(|| {
        if model_len.is_null() || (model_out.is_null() && cap != 0) {
            return TG_E_NULL;
        }
        // SAFETY: non-null, writable by contract.
        unsafe { *model_len = 0 };
        let bytes = match any_bytes(body.cast(), len) {
            Ok(b) => b,
            Err(st) => return st,
        };
        let m = match model_of(bytes) {
            Ok(m) => m,
            Err(e) => return body_status(e),
        };
        // SAFETY: non-null, writable by contract.
        unsafe { *model_len = m.len() };
        if m.len() > cap {
            return TG_E_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller promises `cap` writable bytes at `model_out`
        // (non-null when cap > 0, checked above), and m.len() <= cap; a NUL
        // only when m.len() < cap.
        unsafe {
            std::ptr::copy_nonoverlapping(m.as_ptr(), model_out, m.len());
            if m.len() < cap {
                *model_out.add(m.len()) = 0;
            }
        }
        TG_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::*;

    #[repr(C, align(8))]
    struct Mem([u8; 512]);

    #[test]
    fn scan_in_caller_memory() {
        assert!(tg_body_scan_size() <= 512);
        let mut mem = Mem([0xa5; 512]);
        let mut scan: *mut tg_body_scan = std::ptr::null_mut();
        let base: *mut c_void = mem.0.as_mut_ptr().cast();
        assert_eq!(tg_body_scan_init(base, 512, &mut scan), TG_OK);
        let body = br#"{"messages":[],"model":"Qwen3-32B"}"#;
        for part in body.chunks(3) {
            assert_eq!(tg_body_scan_feed(scan, part.as_ptr(), part.len()), TG_OK);
        }
        assert_eq!(tg_body_scan_feed(scan, std::ptr::null(), 0), TG_OK);
        let (mut m, mut n) = (std::ptr::null(), 0usize);
        assert_eq!(tg_body_scan_finish(scan, &mut m, &mut n), TG_OK);
        // SAFETY: TG_OK: `m` points at `n` bytes inside `mem`.
        assert_eq!(unsafe { std::slice::from_raw_parts(m, n) }, b"Qwen3-32B");

        // Re-init for the next body; a refusal is sticky.
        assert_eq!(tg_body_scan_init(base, 512, &mut scan), TG_OK);
        let bad = b"{\"model\":\"a\",}";
        assert_eq!(
            tg_body_scan_feed(scan, bad.as_ptr(), bad.len()),
            TG_E_BODY_NOT_JSON
        );
        assert_eq!(
            tg_body_scan_feed(scan, b" ".as_ptr(), 1),
            TG_E_BODY_NOT_JSON
        );
        assert_eq!(
            tg_body_scan_finish(scan, &mut m, &mut n),
            TG_E_BODY_NOT_JSON
        );
        assert!(m.is_null() && n == 0);
    }

    #[test]
    fn facts_after_finish() {
        let mut mem = Mem([0; 512]);
        let mut scan: *mut tg_body_scan = std::ptr::null_mut();
        let base: *mut c_void = mem.0.as_mut_ptr().cast();
        assert_eq!(tg_body_scan_init(base, 512, &mut scan), TG_OK);
        let body = format!(
            r#"{{"model":"m","max_tokens":100,"MAX_OUTPUT_TOKENS":250,"i":"data:image/png;base64,{}"}}"#,
            "QUJD".repeat(100)
        );
        let mut out = tg_body_scan_facts {
            size: 3,
            ..Default::default()
        };
        // Not finished yet (and then a bad size, or NULL).
        assert_eq!(tg_body_facts(scan, &mut out), TG_E_INVALID);
        out.size = 0;
        assert_eq!(tg_body_facts(scan, &mut out), TG_E_INVALID);
        assert_eq!(tg_body_facts(std::ptr::null(), &mut out), TG_E_NULL);
        assert_eq!(tg_body_facts(scan, std::ptr::null_mut()), TG_E_NULL);
        for part in body.as_bytes().chunks(5) {
            assert_eq!(tg_body_scan_feed(scan, part.as_ptr(), part.len()), TG_OK);
        }
        assert_eq!(tg_body_facts(scan, &mut out), TG_E_INVALID);
        let (mut m, mut n) = (std::ptr::null(), 0usize);
        assert_eq!(tg_body_scan_finish(scan, &mut m, &mut n), TG_OK);
        out.size = 3;
        assert_eq!(tg_body_facts(scan, &mut out), TG_E_INVALID);
        for size in [0, std::mem::size_of::<tg_body_scan_facts>() as u32, 100] {
            out = tg_body_scan_facts {
                size,
                _reserved: 7,
                ..Default::default()
            };
            assert_eq!(tg_body_facts(scan, &mut out), TG_OK);
            let url = "data:image/png;base64,".len() as u64 + 400;
            assert_eq!(
                out,
                tg_body_scan_facts {
                    size,
                    media_items: 1,
                    bytes: body.len() as u64,
                    media_bytes: url,
                    has_max_output: 1,
                    _reserved: 0,
                    max_output: 250,
                }
            );
        }
        assert_eq!(std::mem::size_of::<tg_body_scan_facts>(), 40);

        // No cap; and a refused body has no facts.
        for (body, want) in [
            (&br#"{"model":"m","max_tokens":1.5}"#[..], TG_OK),
            (br#"{"max_tokens":1}"#, TG_E_BODY_NO_MODEL),
            (br#"{"model":"m"}}"#, TG_E_BODY_NOT_JSON),
        ] {
            assert_eq!(tg_body_scan_init(base, 512, &mut scan), TG_OK);
            tg_body_scan_feed(scan, body.as_ptr(), body.len());
            assert_eq!(tg_body_scan_finish(scan, &mut m, &mut n), want);
            out = tg_body_scan_facts {
                max_output: 9,
                ..Default::default()
            };
            let st = tg_body_facts(scan, &mut out);
            if want == TG_OK {
                assert_eq!(st, TG_OK);
                assert_eq!((out.has_max_output, out.bytes), (0, body.len() as u64));
            } else {
                assert_eq!(st, TG_E_INVALID);
                assert_eq!(out, tg_body_scan_facts::default());
            }
            assert_eq!(out.max_output, 0);
        }
    }

    #[test]
    fn bad_arguments() {
        let mut mem = Mem([0; 512]);
        let mut scan: *mut tg_body_scan = std::ptr::null_mut();
        let base: *mut c_void = mem.0.as_mut_ptr().cast();
        let size = tg_body_scan_size();
        assert_eq!(
            tg_body_scan_init(std::ptr::null_mut(), 512, &mut scan),
            TG_E_NULL
        );
        assert_eq!(
            tg_body_scan_init(base, 512, std::ptr::null_mut()),
            TG_E_NULL
        );
        assert_eq!(tg_body_scan_init(base, size - 1, &mut scan), TG_E_INVALID);
        assert!(scan.is_null());
        // SAFETY: one byte in, still inside `mem` with room for the struct.
        let odd = unsafe { base.cast::<u8>().add(1) }.cast();
        assert_eq!(tg_body_scan_init(odd, size, &mut scan), TG_E_ALIGNMENT);
        assert!(scan.is_null());
        assert_eq!(
            tg_body_scan_feed(std::ptr::null_mut(), b"{".as_ptr(), 1),
            TG_E_NULL
        );
        assert_eq!(tg_body_scan_init(base, size, &mut scan), TG_OK);
        assert_eq!(tg_body_scan_feed(scan, std::ptr::null(), 1), TG_E_NULL);
        let (mut m, mut n) = (std::ptr::null(), 0usize);
        assert_eq!(
            tg_body_scan_finish(std::ptr::null_mut(), &mut m, &mut n),
            TG_E_NULL
        );
        assert_eq!(
            tg_body_scan_finish(scan, std::ptr::null_mut(), &mut n),
            TG_E_NULL
        );
        // An empty body is not JSON.
        assert_eq!(
            tg_body_scan_finish(scan, &mut m, &mut n),
            TG_E_BODY_NOT_JSON
        );
    }

    #[test]
    fn one_shot() {
        let body = br#"{"model":"DeepSeek-V3.1","n":1}"#;
        let mut out = [0xffu8; 64];
        let mut n = 99usize;
        assert_eq!(
            tg_body_model(body.as_ptr(), body.len(), out.as_mut_ptr(), 64, &mut n),
            TG_OK
        );
        assert_eq!(&out[..n], b"DeepSeek-V3.1");
        assert_eq!(out[n], 0);
        assert_eq!(
            tg_body_model(body.as_ptr(), body.len(), out.as_mut_ptr(), 4, &mut n),
            TG_E_BUFFER_TOO_SMALL
        );
        assert_eq!(n, 13);
        assert_eq!(
            tg_body_model(body.as_ptr(), body.len(), std::ptr::null_mut(), 0, &mut n),
            TG_E_BUFFER_TOO_SMALL
        );
        assert_eq!(
            tg_body_model(body.as_ptr(), body.len(), std::ptr::null_mut(), 4, &mut n),
            TG_E_NULL
        );
        let cases: [(&[u8], tg_status); 4] = [
            (b"[]", TG_E_BODY_NOT_JSON),
            (b"{}", TG_E_BODY_NO_MODEL),
            (br#"{"model":"a","Model":"b"}"#, TG_E_BODY_AMBIGUOUS_MODEL),
            (&[b'['; 2000], TG_E_BODY_NOT_JSON),
        ];
        for (b, want) in cases {
            assert_eq!(
                tg_body_model(b.as_ptr(), b.len(), out.as_mut_ptr(), 64, &mut n),
                want
            );
            assert_eq!(n, 0);
        }
        let deep = [b"{\"a\":".as_slice(), &[b'['; 2000]].concat();
        assert_eq!(
            tg_body_model(deep.as_ptr(), deep.len(), out.as_mut_ptr(), 64, &mut n),
            TG_E_BODY_TOO_DEEP
        );
        assert_eq!(
            tg_body_model(std::ptr::null(), 0, out.as_mut_ptr(), 64, &mut n),
            TG_E_BODY_NOT_JSON
        );
        assert_eq!(
            tg_body_model(std::ptr::null(), 5, out.as_mut_ptr(), 64, &mut n),
            TG_E_NULL
        );
    }

    #[test]
    fn constants_and_texts() {
        assert_eq!(TG_BODY_MODEL_MAX, 64);
        assert_eq!(TG_BODY_DEPTH_MAX, 1024);
        for st in 20..=24 {
            // SAFETY: tg_status_str returns a static NUL-terminated string.
            let s = unsafe { std::ffi::CStr::from_ptr(tg_status_str(st)) };
            assert!(s.to_str().unwrap().starts_with("the request body"), "{s:?}");
        }
        let e = crate::Error::Body(crate::body::BodyError::AmbiguousModel);
        assert_eq!(status_of(&e), TG_E_BODY_AMBIGUOUS_MODEL);
        assert!(e.to_string().contains("more than once"));
    }
}
