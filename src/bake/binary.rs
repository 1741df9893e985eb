//! The agent binary a bake stages into the image must start there: a Linux ELF of the
//! recipe's architecture that needs no newer glibc than the base image ships. A haimg built
//! on Debian 12 (glibc 2.36) links against symbol versions up to `GLIBC_2.34`, which Ubuntu
//! 20.04 (2.31) lacks: the image's verify step would fail after a paid builder ran for
//! minutes, or worse, nodes could never run the agent. This check runs before any AWS call.
//!
//! Build the right binary with `scripts/build-agent.sh` (cargo zigbuild for a glibc 2.31
//! target), documented in the README.

use object::elf;
use object::read::elf::{FileHeader, SectionHeader};
use object::Endianness;

use crate::recipe::Arch;

/// What the image needs to know about a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub arch: Option<Arch>,
    /// The newest `GLIBC_x.y` symbol version it needs, and the symbol version's name.
    pub newest_glibc: Option<((u32, u32), String)>,
}

/// Parses `GLIBC_2.31` (and `GLIBC_2.2.5`: the third part does not matter here).
pub fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("GLIBC_")?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Reads the ELF header and the GNU version-needs section.
pub fn inspect(data: &[u8]) -> Result<Inspected, String> {
    let kind = object::FileKind::parse(data).map_err(|e| format!("not an executable: {e}"))?;
    match kind {
        object::FileKind::Elf64 => inspect_elf::<elf::FileHeader64<Endianness>>(data),
        object::FileKind::Elf32 => Err("a 32-bit ELF: haimg images are 64-bit".into()),
        other => Err(format!("not a Linux ELF executable ({other:?})")),
    }
}

fn inspect_elf<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<Inspected, String> {
    let header = H::parse(data).map_err(|e| format!("bad ELF header: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("bad ELF header: {e}"))?;
    let arch = match header.e_machine(endian) {
        elf::EM_X86_64 => Some(Arch::Amd64),
        elf::EM_AARCH64 => Some(Arch::Arm64),
        _ => None,
    };
    let sections = header
        .sections(endian, data)
        .map_err(|e| format!("bad ELF section table: {e}"))?;
    let mut newest: Option<((u32, u32), String)> = None;
    for section in sections.iter() {
        let Some((mut needs, link)) = section
            .gnu_verneed(endian, data)
            .map_err(|e| format!("bad version needs: {e}"))?
        else {
            continue;
        };
        let strings = sections
            .strings(endian, data, link)
            .map_err(|e| format!("bad version strings: {e}"))?;
        while let Some((_, mut aux)) = needs.next().map_err(|e| format!("bad verneed: {e}"))? {
            while let Some(a) = aux.next().map_err(|e| format!("bad vernaux: {e}"))? {
                let name = String::from_utf8_lossy(
                    a.name(endian, strings)
                        .map_err(|e| format!("bad version name: {e}"))?,
                )
                .into_owned();
                if let Some(v) = glibc_version(&name) {
                    if newest.as_ref().is_none_or(|(n, _)| v > *n) {
                        newest = Some((v, name));
                    }
                }
            }
        }
    }
    Ok(Inspected {
        arch,
        newest_glibc: newest,
    })
}

/// Why `data` cannot run on an image of `arch` with glibc `base_glibc`, if it cannot.
pub fn refusal(data: &[u8], arch: Arch, base: &str, base_glibc: (u32, u32)) -> Option<String> {
    const HOW: &str = "build the agent for the image with `scripts/build-agent.sh` \
        (cargo zigbuild for a glibc 2.31 target, see the README) and give it with --haimg-binary";
    let found = match inspect(data) {
        Ok(f) => f,
        Err(e) => return Some(format!("{e}; {HOW}")),
    };
    match found.arch {
        Some(a) if a == arch => {}
        Some(a) => {
            return Some(format!(
                "it is built for {}, the recipe is {}; {HOW}",
                a.as_str(),
                arch.as_str()
            ))
        }
        None => {
            return Some(format!(
                "it is not built for {} (unknown ELF machine); {HOW}",
                arch.as_str()
            ))
        }
    }
    match found.newest_glibc {
        Some(((maj, min), name)) if (maj, min) > base_glibc => Some(format!(
            "it needs symbol version {name}, but {base} has glibc {}.{}: it would not start on the image; {HOW}",
            base_glibc.0, base_glibc.1
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_parse_and_order() {
        assert_eq!(glibc_version("GLIBC_2.31"), Some((2, 31)));
        assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
        assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
        assert_eq!(glibc_version("GCC_3.0"), None);
        assert!((2, 34) > (2, 31) && (2, 4) < (2, 31));
    }

    #[test]
    fn not_an_elf_is_refused() {
        let why = refusal(
            b"#!/bin/sh\necho hi\n",
            Arch::Amd64,
            "Ubuntu 20.04",
            (2, 31),
        )
        .unwrap();
        assert!(
            why.contains("not") && why.contains("build-agent.sh"),
            "{why}"
        );
    }

    #[test]
    fn this_test_binary_is_read() {
        // Whatever glibc built it, the reader finds this machine's architecture and, for a
        // dynamically linked test binary, some GLIBC_ version.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let found = inspect(&me).unwrap();
        assert_eq!(found.arch, Arch::host());
        let (v, name) = found.newest_glibc.expect("a glibc-linked test binary");
        assert!(v >= (2, 2) && name.starts_with("GLIBC_"), "{name}");
        // Refused when the base is older than what it needs, accepted when not.
        let arch = Arch::host().unwrap();
        assert!(refusal(&me, arch, "old", (v.0, v.1 - 1))
            .unwrap()
            .contains(&name));
        assert_eq!(refusal(&me, arch, "new", v), None);
        let other = if arch == Arch::Amd64 {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        assert!(refusal(&me, other, "x", v)
            .unwrap()
            .contains("is built for"));
    }
}
