//! Operator log lines on stderr: one line per event, `key=value` pairs after a level and a message.
//!
//! Nothing secret is ever passed here; request bodies and headers are never logged.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub enum Level {
    Info,
    Warn,
    Error,
}

pub fn line(level: Level, args: fmt::Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let level = match level {
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}.{:03} {level} {args}",
        now.as_secs(),
        now.subsec_millis()
    );
}

#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::line($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::line($crate::log::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::line($crate::log::Level::Error, format_args!($($t)*)) } }
