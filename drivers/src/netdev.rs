//! Naming network interfaces: by name or by index, in the calling thread's namespace.

use std::ffi::{CStr, CString};
use std::io;

use crate::bpf::context;

/// An interface, by name or by index, in the calling thread's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    /// An interface name such as `eth1`.
    Name(String),
    /// An interface index.
    Index(u32),
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Interface::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Interface::Name(name)
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Interface::Index(index)
    }
}

impl Interface {
    /// `(name, index)`, looked up in the calling thread's network namespace.
    pub fn resolve(&self) -> io::Result<(String, u32)> {
        match self {
            Interface::Name(name) => {
                let c = CString::new(name.as_str()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("interface name {name:?} contains a NUL byte"),
                    )
                })?;
                // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
                // if_nametoindex only reads it.
                let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if index == 0 {
                    let err = io::Error::last_os_error();
                    return Err(context(err, format!("no interface named {name:?}")));
                }
                Ok((name.clone(), index))
            }
            Interface::Index(index) => {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: `buf` is IF_NAMESIZE bytes, the size if_indextoname writes at
                // most (name and NUL); it returns null or a pointer into `buf`.
                let ret = unsafe { libc::if_indextoname(*index, buf.as_mut_ptr()) };
                if ret.is_null() {
                    let err = io::Error::last_os_error();
                    return Err(context(err, format!("no interface with index {index}")));
                }
                // SAFETY: on success `buf` holds a NUL-terminated name within its bounds.
                let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
                Ok((name.to_string_lossy().into_owned(), *index))
            }
        }
    }
}
