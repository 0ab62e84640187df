//! Addons of an older addon API, loaded by this host (Zed's `since_v*` model). Which API a
//! component speaks is read from the names of its `shoal:addon` imports and exports before it
//! is compiled.
//!
//! API 0.2.0 changed only two things against 0.1.0 (frozen in `wit/since_v0_1_0/`): it added
//! the `data` interface and two cases to the `hook` enum of `metadata`. Every other
//! interface is the same, type for type, and component-model types are structural, so a
//! 0.1.0 component is adapted by renaming its imports and exports of those interfaces to
//! `@0.2.0` in the binary ([`adapt_v0_1_0`]); the host then links and type-checks it like any
//! other. `metadata@0.1.0` keeps its name: its manifest is read through bindings generated
//! from the frozen WIT and converted (`crate::wit::since_v0_1_0`). The missing `data`
//! interface answers `unsupported`. A later version that changes a function's type needs a
//! real shim here instead of a rename.

use std::borrow::Cow;

use wasm_encoder::reencode::{Reencode, ReencodeComponent};

use crate::wit::PACKAGE;

/// An addon API version this host loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// The first release, frozen in `wit/since_v0_1_0/`.
    V0_1_0,
    /// This host's own (`crate::wit::API_VERSION`).
    V0_2_0,
}

impl ApiVersion {
    /// Every version this host loads, newest first.
    pub const SUPPORTED: [ApiVersion; 2] = [ApiVersion::V0_2_0, ApiVersion::V0_1_0];

    /// The WIT package version ("0.1.0").
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V0_1_0 => "0.1.0",
            ApiVersion::V0_2_0 => "0.2.0",
        }
    }

    /// The version written `s`, if this host loads it.
    pub fn parse(s: &str) -> Option<ApiVersion> {
        ApiVersion::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// Every supported version, for messages ("0.2.0, 0.1.0").
    pub fn supported_list() -> String {
        ApiVersion::SUPPORTED
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `shoal:addon` versions named by a component's top-level imports and exports (sorted,
/// without duplicates; "" for an unversioned name). Empty when it names none.
pub fn api_versions(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut versions = Vec::new();
    for name in top_level_names(bytes)? {
        if let Some((_, version)) = our_interface(&name) {
            versions.push(version.to_string());
        }
    }
    versions.sort();
    versions.dedup();
    Ok(versions)
}

/// `shoal:addon/<iface>@<version>` split into interface and version ("" when unversioned).
fn our_interface(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').unwrap_or((rest, "")))
}

/// The name a 0.1.0 import or export takes in the adapted component.
fn renamed(name: &str) -> Cow<'_, str> {
    match our_interface(name) {
        Some((iface, "0.1.0")) if iface != "metadata" => {
            Cow::Owned(format!("{PACKAGE}/{iface}@{}", ApiVersion::V0_2_0.as_str()))
        }
        _ => Cow::Borrowed(name),
    }
}

/// Every top-level import and export name of a component.
fn top_level_names(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    walk(bytes, &mut |payload, _| {
        match payload {
            wasmparser::Payload::ComponentImportSection(s) => {
                for import in s {
                    names.push(import.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(s) => {
                for export in s {
                    names.push(export.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(names)
}

/// What [`walk`] calls for each payload: the payload, and its section's id and bytes.
type Visit<'v> = dyn FnMut(wasmparser::Payload<'_>, Option<(u8, &[u8])>) -> Result<(), String> + 'v;

/// Call `f` on every top-level payload of a component, with the bytes (section id and
/// contents) it came from; nested modules and components are passed whole, not entered.
fn walk(bytes: &[u8], f: &mut Visit<'_>) -> Result<(), String> {
    let mut parser = wasmparser::Parser::new(0);
    let mut remaining = bytes;
    loop {
        let (consumed, payload) = match parser
            .parse(remaining, true)
            .map_err(|e| format!("not a readable component: {e}"))?
        {
            wasmparser::Chunk::Parsed { consumed, payload } => (consumed, payload),
            wasmparser::Chunk::NeedMoreData(_) => return Err("the file is truncated".into()),
        };
        remaining = &remaining[consumed..];
        if let wasmparser::Payload::ModuleSection {
            unchecked_range, ..
        }
        | wasmparser::Payload::ComponentSection {
            unchecked_range, ..
        } = &payload
        {
            remaining = remaining
                .get(unchecked_range.len()..)
                .ok_or("a nested module runs past the end of the file")?;
        }
        if let wasmparser::Payload::Version { encoding, .. } = &payload {
            if *encoding != wasmparser::Encoding::Component {
                return Err("a core module, not a component".into());
            }
        }
        let end = matches!(payload, wasmparser::Payload::End(_));
        let raw = payload
            .as_section()
            .and_then(|(id, range)| bytes.get(range).map(|b| (id, b)));
        f(payload, raw)?;
        if end {
            return Ok(());
        }
    }
}

/// Converts type references between wasmparser and wasm-encoder, indices unchanged.
struct Same;

impl Reencode for Same {
    type Error = std::convert::Infallible;
}

impl ReencodeComponent for Same {}

/// A 0.1.0 component rewritten to link as a 0.2.0 one: its `shoal:addon` imports and exports
/// other than `metadata` renamed to `@0.2.0`, every other byte as it was.
pub fn adapt_v0_1_0(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = wasm_encoder::Component::new();
    walk(bytes, &mut |payload, raw| {
        match payload {
            wasmparser::Payload::ComponentImportSection(s) => {
                let mut section = wasm_encoder::ComponentImportSection::new();
                for import in s {
                    let import = import.map_err(|e| e.to_string())?;
                    let ty = Same
                        .component_type_ref(import.ty)
                        .map_err(|e| format!("import {}: {e:?}", import.name.name))?;
                    section.import(renamed(import.name.name).as_ref(), ty);
                }
                out.section(&section);
            }
            wasmparser::Payload::ComponentExportSection(s) => {
                let mut section = wasm_encoder::ComponentExportSection::new();
                for export in s {
                    let export = export.map_err(|e| e.to_string())?;
                    let ty = export
                        .ty
                        .map(|t| Same.component_type_ref(t))
                        .transpose()
                        .map_err(|e| format!("export {}: {e:?}", export.name.name))?;
                    section.export(
                        renamed(export.name.name).as_ref(),
                        export.kind.into(),
                        export.index,
                        ty,
                    );
                }
                out.section(&section);
            }
            _ => {
                if let Some((id, data)) = raw {
                    out.section(&wasm_encoder::RawSection { id, data });
                }
            }
        }
        Ok(())
    })?;
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interfaces_unchanged_since_0_1_0_are_renamed() {
        assert_eq!(
            renamed("shoal:addon/lifecycle@0.1.0"),
            "shoal:addon/lifecycle@0.2.0"
        );
        assert_eq!(renamed("shoal:addon/host@0.1.0"), "shoal:addon/host@0.2.0");
        assert_eq!(
            renamed("shoal:addon/metadata@0.1.0"),
            "shoal:addon/metadata@0.1.0"
        );
        assert_eq!(
            renamed("wasi:io/streams@0.2.6"),
            "wasi:io/streams@0.2.6",
            "not ours"
        );
        assert_eq!(
            renamed("shoal:addon/ha@0.2.0"),
            "shoal:addon/ha@0.2.0",
            "already current"
        );
    }

    #[test]
    fn versions_parse_only_when_supported() {
        assert_eq!(ApiVersion::parse("0.1.0"), Some(ApiVersion::V0_1_0));
        assert_eq!(ApiVersion::parse("0.2.0"), Some(ApiVersion::V0_2_0));
        assert_eq!(ApiVersion::parse("0.3.0"), None);
        assert_eq!(ApiVersion::supported_list(), "0.2.0, 0.1.0");
    }

    #[test]
    fn a_component_round_trips_with_only_the_names_changed() {
        // A component importing and exporting 0.1.0 interfaces (types only, no code).
        let mut c = wasm_encoder::Component::new();
        let mut types = wasm_encoder::ComponentTypeSection::new();
        types.instance(&wasm_encoder::InstanceType::new());
        c.section(&types);
        let mut imports = wasm_encoder::ComponentImportSection::new();
        imports.import(
            "shoal:addon/host@0.1.0",
            wasm_encoder::ComponentTypeRef::Instance(0),
        );
        imports.import(
            "shoal:addon/types@0.1.0",
            wasm_encoder::ComponentTypeRef::Instance(0),
        );
        c.section(&imports);
        let mut exports = wasm_encoder::ComponentExportSection::new();
        exports.export(
            "shoal:addon/ha@0.1.0",
            wasm_encoder::ComponentExportKind::Instance,
            0,
            None,
        );
        exports.export(
            "shoal:addon/metadata@0.1.0",
            wasm_encoder::ComponentExportKind::Instance,
            1,
            None,
        );
        c.section(&exports);
        let bytes = c.finish();
        assert_eq!(api_versions(&bytes).unwrap(), vec!["0.1.0".to_string()]);
        let adapted = adapt_v0_1_0(&bytes).unwrap();
        let mut names = top_level_names(&adapted).unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                "shoal:addon/ha@0.2.0",
                "shoal:addon/host@0.2.0",
                "shoal:addon/metadata@0.1.0",
                "shoal:addon/types@0.2.0"
            ]
        );
        assert_eq!(
            api_versions(&adapted).unwrap(),
            vec!["0.1.0".to_string(), "0.2.0".to_string()]
        );
        assert!(adapt_v0_1_0(b"\0asm\x01\0\0\0").is_err(), "a core module");
        assert!(
            adapt_v0_1_0(&bytes[..bytes.len() - 3]).is_err(),
            "truncated"
        );
    }
}
