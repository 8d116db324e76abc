//! The PROXY protocol from a trusted proxy, read from a connection: with a
//! bounded size ([`MAX_HEADER`]) and time, and only from peers in
//! `--trusted-proxy` (from anyone else a PROXY header is just bytes, refused
//! by the HTTP parser). What the bytes are is [`crate::proxy_header`]'s
//! pure parser. A trusted peer that does not send a header (it passes
//! `X-Forwarded-For` instead) loses nothing: the bytes read to decide are
//! replayed to HTTP ([`Prefixed`]).

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::proxy_header::{parse, Parsed, MAX_HEADER};

/// Why a trusted peer's connection was dropped before HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The header did not come whole within the time allowed.
    #[error("no whole PROXY header in time")]
    Timeout,
    /// A malformed or oversized header.
    #[error("malformed PROXY header")]
    Invalid,
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
}

/// Reads a PROXY header from the start of `io` within `wait`. Returns the
/// address it names (`None` for a header that names none, or no header at
/// all) and the connection, with whatever was read past the header (or
/// everything read, when there was no header) to be read again.
pub async fn read_header<T: AsyncRead + Unpin>(
    mut io: T,
    wait: Duration,
) -> Result<(Option<IpAddr>, Prefixed<T>), ProxyError> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 256];
            let room = (MAX_HEADER + 1).saturating_sub(buf.len()).min(chunk.len());
            let n = io.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Err(ProxyError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse(&buf) {
                Parsed::Incomplete => continue,
                Parsed::Invalid => return Err(ProxyError::Invalid),
                Parsed::NotProxy => return Ok((None, 0)),
                Parsed::Header { len, client } => return Ok((client, len)),
            }
        }
    };
    let (client, used) = tokio::time::timeout(wait, read)
        .await
        .map_err(|_| ProxyError::Timeout)??;
    buf.drain(..used.min(buf.len()));
    Ok((
        client,
        Prefixed {
            prefix: buf,
            at: 0,
            inner: io,
        },
    ))
}

/// A connection whose first bytes were already read: they are read again
/// first. Writes go straight through.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    /// A connection with nothing read yet.
    pub fn new(inner: T) -> Self {
        Prefixed {
            prefix: Vec::new(),
            at: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(out.remaining());
            out.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_header_is_consumed_and_the_rest_replayed() {
        let (mut a, b) = tokio::io::duplex(4096);
        a.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (client, mut rest) = read_header(b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(client, Some("192.0.2.7".parse().unwrap()));
        let mut got = vec![0u8; 16];
        rest.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        // No header: everything read comes again.
        let (mut a, b) = tokio::io::duplex(4096);
        a.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let (client, mut rest) = read_header(b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(client, None);
        let mut got = vec![0u8; 23];
        rest.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /healthz HTTP/1.1\r\n");
        // A peer that sends half a header and stops: refused in time.
        let (mut a, b) = tokio::io::duplex(4096);
        a.write_all(b"PROXY TCP4 192.").await.unwrap();
        assert!(matches!(
            read_header(b, Duration::from_millis(50)).await,
            Err(ProxyError::Timeout)
        ));
    }
}
