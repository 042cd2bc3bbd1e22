//! Sizes as people read them in errors and logs: `64 MiB`, `1.5 KiB`, `300 bytes`.

use std::fmt;

/// A number of bytes, displayed in the largest binary unit it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        let bytes = self.0;
        for (unit, size) in UNITS {
            if bytes >= size {
                return if bytes.is_multiple_of(size) {
                    write!(f, "{} {unit}", bytes / size)
                } else {
                    write!(f, "{:.1} {unit}", bytes as f64 / size as f64)
                };
            }
        }
        match bytes {
            1 => write!(f, "1 byte"),
            _ => write!(f, "{bytes} bytes"),
        }
    }
}

impl From<usize> for ByteSize {
    fn from(bytes: usize) -> Self {
        ByteSize(bytes as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_read_in_the_largest_unit_they_reach() {
        for (bytes, shown) in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (1023, "1023 bytes"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (64 * 1024, "64 KiB"),
            (32 << 20, "32 MiB"),
            ((64 << 20) + 1, "64.0 MiB"),
            (3 << 30, "3 GiB"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), shown);
        }
    }
}
