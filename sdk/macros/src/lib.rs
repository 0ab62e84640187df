//! Build-time helpers of the Shoal addon SDK. `manifest_file!("addon.toml")` reads an addon's
//! manifest from a TOML file next to its `Cargo.toml` when the addon is compiled, checks it
//! (see `model`), and expands to the `AddonManifest` value: a mistake in the file is a
//! compile error naming the file and the entry, and nothing is parsed at run time.
//! Use it through `shoal_sdk::manifest_file!`; the format is in `docs/addon-manifest.md`.

mod model;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::quote;

use model::{ManifestFile, ParamType, Value};

/// `manifest_file!("addon.toml")`: the addon manifest in that file (a path relative to the
/// crate's `Cargo.toml`), as a `shoal_sdk::manifest::AddonManifest` expression.
#[proc_macro]
pub fn manifest_file(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(t) => t.into(),
        Err(msg) => {
            let msg = format!("shoal_sdk::manifest_file!: {msg}");
            quote!(::core::compile_error!(#msg)).into()
        }
    }
}

fn expand(input: TokenStream) -> Result<Tokens, String> {
    let mut tokens = input.into_iter();
    let (Some(proc_macro::TokenTree::Literal(lit)), None) = (tokens.next(), tokens.next()) else {
        return Err("expected one string literal: the manifest file's path".into());
    };
    let text = lit.to_string();
    let rel = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('\\'))
        .ok_or_else(|| format!("expected a plain string literal, got {text}"))?;
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| "CARGO_MANIFEST_DIR is not set (build with cargo)".to_string())?;
    let path = std::path::Path::new(&dir).join(rel);
    let body = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let m = model::parse(&body).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest = generate(&m)?;
    let path_text = path.display().to_string();
    // `include_bytes!` makes cargo rebuild the addon when the file changes.
    Ok(quote! {{
        const _: &[u8] = ::core::include_bytes!(#path_text);
        #manifest
    }})
}

fn strings(v: &[String]) -> Tokens {
    quote!(::std::vec![#(::std::string::String::from(#v)),*])
}

fn opt_string(v: &Option<String>) -> Tokens {
    match v {
        Some(s) => quote!(::core::option::Option::Some(::std::string::String::from(#s))),
        None => quote!(::core::option::Option::None),
    }
}

/// A kebab-case WIT name as the Rust variant name wit-bindgen gives it.
fn variant(name: &str) -> proc_macro2::Ident {
    let camel: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    proc_macro2::Ident::new(&camel, Span::call_site())
}

fn value(v: &Value) -> Tokens {
    match v {
        Value::Boolean(b) => quote!(::shoal_sdk::Value::Boolean(#b)),
        Value::Integer(i) => quote!(::shoal_sdk::Value::Integer(#i)),
        Value::Float(f) => quote!(::shoal_sdk::Value::Float(#f)),
        Value::Text(s) => quote!(::shoal_sdk::Value::Text(::std::string::String::from(#s))),
    }
}

fn generate(m: &ManifestFile) -> Result<Tokens, String> {
    let md = quote!(::shoal_sdk::manifest);
    let single = m.versions.len() == 1;
    let versions = m.versions.iter().map(|v| {
        let (version, default) = (&v.version, v.default || single);
        let (paths, packages) = (strings(&v.binary_paths), strings(&v.packages));
        quote!(#md::EngineVersion {
            version: #version.into(), is_default: #default, binary_paths: #paths, packages: #packages,
        })
    });
    let topologies = m.topologies.iter().map(|t| {
        let kind = variant(&t.kind);
        let (roles, min, max, d) = (
            strings(&t.roles),
            t.min_members,
            t.max_members,
            &t.description,
        );
        quote!(#md::Topology {
            kind: #md::TopologyKind::#kind, roles: #roles, min_members: #min, max_members: #max,
            description: #d.into(),
        })
    });
    let roles = m.roles.iter().map(|r| {
        let (name, w, v, e, d) = (&r.name, r.writable, r.votes, r.exclusive, &r.description);
        quote!(#md::RoleSpec { name: #name.into(), writable: #w, votes: #v, exclusive: #e, description: #d.into() })
    });
    let ports = m.ports.iter().map(|p| {
        let (name, d) = (&p.name, &p.description);
        quote!(#md::PortSpec { name: #name.into(), description: #d.into() })
    });
    let backups = m.backup_methods.iter().map(|b| {
        let kind = variant(&b.kind);
        let (name, target, pitr, d) = (
            &b.name,
            opt_string(&b.target_role),
            b.point_in_time,
            &b.description,
        );
        quote!(#md::BackupMethod {
            name: #name.into(), kind: #md::BackupKind::#kind, target_role: #target,
            point_in_time: #pitr, description: #d.into(),
        })
    });
    let mut params = Vec::new();
    for p in &m.parameters {
        let ty = model::param_type(p)?;
        let default = match &p.default {
            Some(d) => {
                let v = value(&model::default_value(&p.name, &ty, d)?);
                quote!(::core::option::Option::Some(#v))
            }
            None => quote!(::core::option::Option::None),
        };
        let ty = match ty {
            ParamType::Boolean => quote!(#md::ParamType::Boolean),
            ParamType::Text => quote!(#md::ParamType::Text),
            ParamType::Integer(min, max) => {
                quote!(#md::ParamType::Integer(#md::IntRange { min: #min, max: #max }))
            }
            ParamType::SizeBytes(min, max) => {
                quote!(#md::ParamType::SizeBytes(#md::IntRange { min: #min, max: #max }))
            }
            ParamType::DurationMs(min, max) => {
                quote!(#md::ParamType::DurationMs(#md::IntRange { min: #min, max: #max }))
            }
            ParamType::Float(min, max) => {
                quote!(#md::ParamType::Float(#md::FloatRange { min: #min, max: #max }))
            }
            ParamType::Choice(c) => {
                let c = strings(&c);
                quote!(#md::ParamType::Choice(#c))
            }
        };
        let apply = variant(&p.apply);
        let (name, d, versions) = (&p.name, &p.description, strings(&p.versions));
        params.push(quote!(#md::ParamSpec {
            name: #name.into(), type_: #ty, default_value: #default, apply: #md::ApplyMode::#apply,
            description: #d.into(), versions: #versions,
        }));
    }
    let mut caps = Vec::new();
    for c in &m.capabilities {
        caps.push(match model::capability(c)? {
            ("exec", name) => quote!(#md::Capability::Exec(#name.into())),
            ("connect", addr) => quote!(#md::Capability::Connect(#addr.into())),
            _ => quote!(#md::Capability::NameLookup),
        });
    }
    let limits = model::limits(&m.limits)?.into_iter().map(|l| {
        let hook = variant(&l.hook);
        let t = l.timeout_ms;
        let mem = match l.memory_bytes {
            Some(b) => quote!(::core::option::Option::Some(#b)),
            None => quote!(::core::option::Option::None),
        };
        quote!(#md::HookLimit { hook: #md::Hook::#hook, timeout_ms: #t, memory_bytes: #mem })
    });
    let client = match &m.client {
        Some(c) => {
            let (uri, shell) = (&c.uri, strings(&c.shell));
            quote!(::core::option::Option::Some(#md::ClientInfo { uri_template: #uri.into(), shell: #shell }))
        }
        None => quote!(::core::option::Option::None),
    };
    let sync = variant(&m.sync_replication);
    let (engine, display, description, version) =
        (&m.engine, &m.display_name, &m.description, &m.addon_version);
    let admin = opt_string(&m.admin_user);
    Ok(quote!(#md::AddonManifest {
        engine: #engine.into(),
        display_name: #display.into(),
        description: #description.into(),
        addon_version: #version.into(),
        versions: ::std::vec![#(#versions),*],
        topologies: ::std::vec![#(#topologies),*],
        roles: ::std::vec![#(#roles),*],
        ports: ::std::vec![#(#ports),*],
        backup_methods: ::std::vec![#(#backups),*],
        parameters: ::std::vec![#(#params),*],
        capabilities: ::std::vec![#(#caps),*],
        limits: ::std::vec![#(#limits),*],
        client: #client,
        admin_user: #admin,
        sync_replication: #md::SyncSupport::#sync,
    }))
}
