//! Thin owners of NNG's C objects (`nng-sys`): a socket closed on drop, a
//! message freed on drop, an aio freed on drop, and NNG's error codes as
//! text. The rest of the transport builds on these, so the `unsafe` calls
//! that create and destroy NNG objects are all here, each with its reason.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_void};
use std::ptr::NonNull;

/// NNG's description of an error code.
pub fn error_text(errno: i32) -> String {
    // SAFETY: nng_strerror returns a pointer to a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(nng_sys::nng_strerror(errno)) };
    text.to_string_lossy().into_owned()
}

fn check(rv: i32) -> Result<(), i32> {
    if rv == 0 { Ok(()) } else { Err(rv) }
}

/// Which protocol a socket speaks.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    Rep,
    Req,
    Bus,
    Pair0,
}

/// An open NNG socket, closed when dropped.
#[derive(Debug)]
pub struct Socket(nng_sys::nng_socket);

// SAFETY: an nng_socket is a handle (an id); NNG's socket functions are
// thread-safe.
unsafe impl Send for Socket {}
unsafe impl Sync for Socket {}

impl Socket {
    pub fn open(protocol: Protocol) -> Result<Socket, i32> {
        let mut socket = nng_sys::nng_socket::default();
        // SAFETY: `socket` is a valid out-pointer for the open functions.
        let rv = unsafe {
            match protocol {
                Protocol::Rep => nng_sys::nng_rep0_open(&mut socket),
                Protocol::Req => nng_sys::nng_req0_open(&mut socket),
                Protocol::Bus => nng_sys::nng_bus0_open(&mut socket),
                Protocol::Pair0 => nng_sys::nng_pair0_open(&mut socket),
            }
        };
        check(rv).map(|()| Socket(socket))
    }

    pub fn raw(&self) -> nng_sys::nng_socket {
        self.0
    }

    /// The largest message this socket reads: NNG closes a connection that
    /// announces a longer one before reading it, so memory stays bounded.
    pub fn set_recv_max(&self, bytes: usize) -> Result<(), i32> {
        let opt = nng_sys::NNG_OPT_RECVMAXSZ.as_ptr().cast();
        // SAFETY: the socket is open; `opt` is a NUL-terminated option name.
        check(unsafe { nng_sys::nng_socket_set_size(self.0, opt, bytes) })
    }

    /// A millisecond option (`name` with its NUL).
    pub fn set_ms(&self, name: &[u8], millis: i32) -> Result<(), i32> {
        // SAFETY: the socket is open; `name` is a NUL-terminated option name.
        check(unsafe { nng_sys::nng_socket_set_ms(self.0, name.as_ptr().cast(), millis) })
    }

    /// Listens on `url`; a busy or bad address is an error now.
    pub fn listen(&self, url: &CString) -> Result<(), i32> {
        // SAFETY: the socket is open; `url` is NUL-terminated; a null
        // listener pointer is allowed.
        check(unsafe { nng_sys::nng_listen(self.0, url.as_ptr(), std::ptr::null_mut(), 0) })
    }

    /// Dials `url` at once (so that a peer not listening is an error now);
    /// NNG redials by itself if the connection drops later. Blocks while
    /// it connects: call it off the async threads.
    pub fn dial(&self, url: &CString) -> Result<(), i32> {
        // SAFETY: the socket is open; `url` is NUL-terminated; a null
        // dialer pointer is allowed; flags 0 dial synchronously.
        check(unsafe { nng_sys::nng_dial(self.0, url.as_ptr(), std::ptr::null_mut(), 0) })
    }

    /// Sends `body` without waiting; an error if it cannot be queued now.
    pub fn send_now(&self, body: &[u8]) -> Result<(), i32> {
        let flags = nng_sys::NNG_FLAG_NONBLOCK as i32;
        // SAFETY: the socket is open; without NNG_FLAG_ALLOC nng_send copies
        // `body.len()` bytes and does not keep the pointer.
        check(unsafe {
            nng_sys::nng_send(self.0, body.as_ptr().cast_mut().cast(), body.len(), flags)
        })
    }

    /// Sends `body`, waiting at most the socket's send timeout.
    pub fn send(&self, body: &[u8]) -> Result<(), i32> {
        // SAFETY: as in `send_now`.
        check(unsafe { nng_sys::nng_send(self.0, body.as_ptr().cast_mut().cast(), body.len(), 0) })
    }

    /// Receives one message: at once (`wait` false) or waiting at most the
    /// socket's receive timeout.
    pub fn receive(&self, wait: bool) -> Result<Msg, i32> {
        let mut msg: *mut nng_sys::nng_msg = std::ptr::null_mut();
        let flags = if wait {
            0
        } else {
            nng_sys::NNG_FLAG_NONBLOCK as i32
        };
        // SAFETY: the socket is open; `msg` is a valid out-pointer.
        check(unsafe { nng_sys::nng_recvmsg(self.0, &mut msg, flags) })?;
        // SAFETY: on success nng_recvmsg hands over a valid message.
        Ok(unsafe { Msg::from_raw(msg) })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: each Socket closes its socket once. nng_close waits for
        // the socket's operations to finish; it is never called from an NNG
        // callback (a Socket is owned by async or plain code only).
        unsafe { nng_sys::nng_close(self.0) };
    }
}

/// An NNG message we own, freed when dropped.
#[derive(Debug)]
pub struct Msg(NonNull<nng_sys::nng_msg>);

// SAFETY: a message is plain memory owned by whoever holds this value.
unsafe impl Send for Msg {}
unsafe impl Sync for Msg {}

impl Msg {
    /// A message holding a copy of `body`.
    pub fn new(body: &[u8]) -> Result<Msg, i32> {
        let mut msg: *mut nng_sys::nng_msg = std::ptr::null_mut();
        // SAFETY: `msg` is a valid out-pointer.
        check(unsafe { nng_sys::nng_msg_alloc(&mut msg, 0) })?;
        // SAFETY: nng_msg_alloc succeeded, so `msg` is valid and ours.
        let msg = unsafe { Msg::from_raw(msg) };
        // SAFETY: the message is valid; the pointer and length describe `body`.
        check(unsafe {
            nng_sys::nng_msg_append(msg.0.as_ptr(), body.as_ptr().cast(), body.len())
        })?;
        Ok(msg)
    }

    /// Takes ownership of a message NNG handed over.
    ///
    /// # Safety
    /// `raw` must be a valid message that nobody else owns or frees.
    pub unsafe fn from_raw(raw: *mut nng_sys::nng_msg) -> Msg {
        match NonNull::new(raw) {
            Some(msg) => Msg(msg),
            // NNG never hands over a null message on success.
            None => unreachable!("NNG handed over a null message"),
        }
    }

    /// Gives the message to NNG (which frees it once sent).
    pub fn into_raw(self) -> *mut nng_sys::nng_msg {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }

    pub fn body(&self) -> &[u8] {
        // SAFETY: the message is valid while we own it; body and length
        // describe its contents, which nothing else changes meanwhile.
        unsafe {
            let len = nng_sys::nng_msg_len(self.0.as_ptr());
            if len == 0 {
                return &[];
            }
            std::slice::from_raw_parts(nng_sys::nng_msg_body(self.0.as_ptr()).cast::<u8>(), len)
        }
    }

    /// The connection it came in on.
    pub fn pipe(&self) -> u32 {
        // SAFETY: the message is valid.
        let pipe = unsafe { nng_sys::nng_msg_get_pipe(self.0.as_ptr()) };
        // SAFETY: nng_pipe_id only reads the handle.
        u32::try_from(unsafe { nng_sys::nng_pipe_id(pipe) }).unwrap_or(0)
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: we own the message and free it once.
        unsafe { nng_sys::nng_msg_free(self.0.as_ptr()) };
    }
}

/// The callback of an aio: runs on an NNG thread with the aio's argument.
pub type Callback = unsafe extern "C" fn(*mut c_void);

/// An NNG aio (one asynchronous operation at a time), freed when dropped.
/// Dropping it waits for its operation to end (and its callback to
/// return), so it must never be dropped inside its own callback.
#[derive(Debug)]
pub struct Aio(NonNull<nng_sys::nng_aio>);

// SAFETY: NNG's aio functions are thread-safe; the owner decides who starts
// operations on it (see the users of this type).
unsafe impl Send for Aio {}
unsafe impl Sync for Aio {}

impl Aio {
    /// An aio that calls `callback(arg)` when an operation ends.
    ///
    /// # Safety
    /// `arg` must stay valid until the aio is dropped (or stopped).
    pub unsafe fn new(callback: Callback, arg: *mut c_void) -> Result<Aio, i32> {
        let mut aio: *mut nng_sys::nng_aio = std::ptr::null_mut();
        // SAFETY: `aio` is a valid out-pointer; the caller keeps `arg` valid.
        check(unsafe { nng_sys::nng_aio_alloc(&mut aio, Some(callback), arg) })?;
        NonNull::new(aio).map(Aio).ok_or(nng_sys::NNG_ENOMEM as i32)
    }

    pub fn raw(&self) -> *mut nng_sys::nng_aio {
        self.0.as_ptr()
    }

    /// The result of the last operation (0 on success).
    pub fn result(&self) -> i32 {
        // SAFETY: the aio is valid.
        unsafe { nng_sys::nng_aio_result(self.0.as_ptr()) }
    }

    /// Takes the message the aio holds (after a receive, or a failed send).
    pub fn take_msg(&self) -> Option<Msg> {
        // SAFETY: the aio is valid and idle (called from its callback or
        // after its operation ended); a message it holds is ours to take.
        let raw = unsafe { nng_sys::nng_aio_get_msg(self.0.as_ptr()) };
        if raw.is_null() {
            return None;
        }
        // SAFETY: detach it from the aio so that it is owned once.
        unsafe { nng_sys::nng_aio_set_msg(self.0.as_ptr(), std::ptr::null_mut()) };
        // SAFETY: a non-null message taken from the aio is ours.
        Some(unsafe { Msg::from_raw(raw) })
    }

    /// Hands `msg` to the aio for the next send.
    pub fn set_msg(&self, msg: Msg) {
        // SAFETY: the aio is valid and idle; NNG owns the message from now
        // (it frees it once sent; a failed send leaves it for `take_msg`).
        unsafe { nng_sys::nng_aio_set_msg(self.0.as_ptr(), msg.into_raw()) };
    }

    /// Cancels the operation under way and waits until its callback has
    /// returned; later operations on this aio fail at once. Not from the
    /// aio's own callback.
    pub fn stop(&self) {
        // SAFETY: the aio is valid; the caller is not its callback.
        unsafe { nng_sys::nng_aio_stop(self.0.as_ptr()) };
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        // SAFETY: freed once; nng_aio_free stops the aio and waits for its
        // callback first. Never dropped inside its own callback.
        unsafe { nng_sys::nng_aio_free(self.0.as_ptr()) };
    }
}

/// An NNG context (its own protocol state on a shared socket), closed when
/// dropped.
#[derive(Debug)]
pub struct Ctx(nng_sys::nng_ctx);

// SAFETY: a context is a handle; NNG's context functions are thread-safe.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

impl Ctx {
    pub fn open(socket: &Socket) -> Result<Ctx, i32> {
        let mut ctx = nng_sys::nng_ctx::default();
        // SAFETY: the socket is open; `ctx` is a valid out-pointer.
        check(unsafe { nng_sys::nng_ctx_open(&mut ctx, socket.raw()) }).map(|()| Ctx(ctx))
    }

    /// Starts a receive on `aio`; its callback runs when it ends.
    pub fn receive(&self, aio: &Aio) {
        // SAFETY: the context is open and the aio valid and idle.
        unsafe { nng_sys::nng_ctx_recv(self.0, aio.raw()) };
    }

    /// Starts sending the message set on `aio`; its callback runs when it ends.
    pub fn send(&self, aio: &Aio) {
        // SAFETY: the context is open and the aio valid, idle, with a message.
        unsafe { nng_sys::nng_ctx_send(self.0, aio.raw()) };
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: closed once, after its aio has stopped (its owner drops
        // the aio first).
        unsafe { nng_sys::nng_ctx_close(self.0) };
    }
}

/// Closes a connection; one already gone is no error.
pub fn close_pipe(pipe: nng_sys::nng_pipe) {
    // SAFETY: nng_pipe_close looks the pipe up and does nothing if it is gone.
    unsafe { nng_sys::nng_pipe_close(pipe) };
}

/// The IP address at the other end of a connection, if it is TCP.
pub fn peer_ip(pipe: nng_sys::nng_pipe) -> Option<std::net::IpAddr> {
    let mut addr = nng_sys::nng_sockaddr {
        s_family: nng_sys::nng_sockaddr_family::NNG_AF_UNSPEC as u16,
    };
    let opt = nng_sys::NNG_OPT_REMADDR.as_ptr().cast();
    // SAFETY: `addr` is a valid out-pointer; `opt` is NUL-terminated.
    if unsafe { nng_sys::nng_pipe_get_addr(pipe, opt, &mut addr) } != 0 {
        return None;
    }
    // SAFETY: every variant starts with the family; it says which one is set.
    let family = unsafe { addr.s_family };
    if family == nng_sys::nng_sockaddr_family::NNG_AF_INET as u16 {
        // SAFETY: the family says `s_in` is set.
        let v4 = unsafe { addr.s_in };
        Some(std::net::Ipv4Addr::from(u32::from_be(v4.sa_addr)).into())
    } else if family == nng_sys::nng_sockaddr_family::NNG_AF_INET6 as u16 {
        // SAFETY: the family says `s_in6` is set.
        let v6 = unsafe { addr.s_in6 };
        Some(std::net::Ipv6Addr::from(v6.sa_addr).into())
    } else {
        None
    }
}
