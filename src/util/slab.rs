//! A fixed-capacity slab: entries addressed by a u32 key, allocated once up front, so
//! inserting and removing on the I/O path never allocates.

pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    pub fn with_capacity(n: usize) -> Self {
        assert!(n <= u32::MAX as usize);
        Slab {
            entries: (0..n).map(|_| None).collect(),
            free: (0..n as u32).rev().collect(),
        }
    }

    /// Store `v`; None when the slab is full.
    pub fn insert(&mut self, v: T) -> Option<u32> {
        let k = self.free.pop()?;
        debug_assert!(self.entries[k as usize].is_none());
        self.entries[k as usize] = Some(v);
        Some(k)
    }

    /// Take the entry out. Panics if `k` is not live: that is a bookkeeping bug.
    pub fn remove(&mut self, k: u32) -> T {
        let v = self.entries[k as usize].take().expect("slab key not live");
        self.free.push(k);
        v
    }

    pub fn contains(&self, k: u32) -> bool {
        self.entries.get(k as usize).is_some_and(Option::is_some)
    }

    pub fn get(&self, k: u32) -> &T {
        self.entries[k as usize]
            .as_ref()
            .expect("slab key not live")
    }

    pub fn get_mut(&mut self, k: u32) -> &mut T {
        self.entries[k as usize]
            .as_mut()
            .expect("slab key not live")
    }

    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_reuses_keys() {
        let mut s = Slab::with_capacity(2);
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert!(s.insert("c").is_none());
        assert_eq!(s.remove(a), "a");
        assert_eq!(s.insert("d"), Some(a));
        assert_eq!(*s.get_mut(b), "b");
        assert_eq!(s.len(), 2);
    }
}
