//! Messages on the takeover socket: `kind`, `length` (u32), payload, with at
//! most one file descriptor riding on the first byte (SCM_RIGHTS). Blocking
//! std sockets: a takeover happens once in a process's life, on threads of
//! its own.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// A client's state is far smaller; anything larger is not ours.
const MAX_PAYLOAD: usize = 64 << 20;

pub fn send(s: &UnixStream, kind: u8, payload: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let mut msg = Vec::with_capacity(5 + payload.len());
    msg.push(kind);
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(payload);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let sent = sendmsg(
        s,
        &[io::IoSlice::new(&msg)],
        &mut control,
        SendFlags::empty(),
    )?;
    // The descriptor went with the first byte; the rest is plain data.
    (&mut &*s).write_all(&msg[sent..])
}

/// The next message: its kind, payload and descriptor, if one came.
pub fn recv(s: &UnixStream) -> io::Result<(u8, Vec<u8>, Option<OwnedFd>)> {
    let mut head = [0u8; 5];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        s,
        &mut [io::IoSliceMut::new(&mut head)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                // One is expected; any other is closed as it drops.
                fd.get_or_insert(f);
            }
        }
    }
    (&mut &*s).read_exact(&mut head[got.bytes..])?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "takeover message too large",
        ));
    }
    let mut payload = vec![0; len];
    (&mut &*s).read_exact(&mut payload)?;
    Ok((head[0], payload, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_descriptor_and_nothing_mixes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, mut y) = UnixStream::pair().unwrap();
        let fd: OwnedFd = x.into();
        send(&a, b'C', b"state", Some(&fd)).unwrap();
        send(&a, b'D', b"", None).unwrap();
        let (kind, payload, got) = recv(&b).unwrap();
        assert_eq!((kind, &payload[..]), (b'C', &b"state"[..]));
        // The descriptor received is the socket sent: what is written to
        // it arrives at its peer.
        let mut passed = UnixStream::from(got.expect("a descriptor"));
        passed.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        y.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let (kind, payload, got) = recv(&b).unwrap();
        assert_eq!((kind, payload.len(), got.is_none()), (b'D', 0, true));
        drop(a);
        assert!(recv(&b).is_err());
    }
}
