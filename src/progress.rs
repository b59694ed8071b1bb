//! How far a long operation (a `save` of a large image) has got, told to whoever asked: the
//! CLI's progress bar, a control-socket client, or nobody. Kernel- and terminal-free, so the
//! operations that report stay testable and know nothing of how progress is shown.

use std::io::{self, Write};

/// Told the work done so far and the whole, both in bytes. Calls come in order, from the
/// operation's thread, each with a larger `done`; the last has `done == total`.
pub trait Progress: Sync {
    fn update(&self, done: u64, total: u64);
}

/// Progress nobody watches.
pub struct Silent;

impl Progress for Silent {
    fn update(&self, _done: u64, _total: u64) {}
}

impl<F: Fn(u64, u64) + Sync> Progress for F {
    fn update(&self, done: u64, total: u64) {
        self(done, total)
    }
}

/// A writer that counts the bytes it passes on and reports them, about once per percent, so
/// a reporter that writes to a socket is not called for every chunk.
pub struct Counting<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    progress: &'a dyn Progress,
    total: u64,
    done: u64,
    reported: u64,
}

impl<'a, W: Write + ?Sized> Counting<'a, W> {
    /// Starts the count at zero of `total`, and says so.
    pub fn new(inner: &'a mut W, total: u64, progress: &'a dyn Progress) -> Self {
        progress.update(0, total);
        Counting {
            inner,
            progress,
            total,
            done: 0,
            reported: 0,
        }
    }

    /// Reports the final count if the last write did not.
    pub fn finish(self) {
        if self.reported != self.done || self.done == 0 {
            self.progress.update(self.done, self.total);
        }
    }
}

impl<W: Write + ?Sized> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done = self.done.saturating_add(n as u64);
        let step = (self.total / 100).max(1);
        if self.done - self.reported >= step || self.done >= self.total {
            self.reported = self.done;
            self.progress.update(self.done, self.total);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn counts_every_byte_reports_in_order_and_ends_at_the_total() {
        let seen = Mutex::new(Vec::new());
        let record = |done, total| seen.lock().unwrap().push((done, total));
        let mut sink = Vec::new();
        let mut w = Counting::new(&mut sink, 1000, &record);
        for _ in 0..100 {
            w.write_all(&[7u8; 10]).unwrap();
        }
        w.finish();
        let seen = seen.into_inner().unwrap();
        assert_eq!(sink.len(), 1000);
        assert_eq!(seen.first(), Some(&(0, 1000)));
        assert_eq!(seen.last(), Some(&(1000, 1000)));
        assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "{seen:?}");
        // About once per percent, not once per write of a byte.
        assert!(seen.len() <= 102, "{}", seen.len());
    }

    #[test]
    fn an_empty_operation_still_reports_its_end() {
        let seen = Mutex::new(Vec::new());
        let record = |done, total| seen.lock().unwrap().push((done, total));
        let mut sink = Vec::new();
        Counting::new(&mut sink, 0, &record).finish();
        assert_eq!(seen.into_inner().unwrap(), vec![(0, 0), (0, 0)]);
    }
}
