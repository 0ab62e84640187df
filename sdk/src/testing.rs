//! Values for an addon's native unit tests (`cargo test` on the host, no Shoal needed): an
//! [`Instance`] and [`Member`]s as the host would pass them. Hooks that only compute (a
//! manifest, `run-spec`, `render-config`, parsers) can be tested with these; hooks that call
//! host imports (logging, `exec`, streams) can only run inside Shoal.

use crate::{Endpoint, Instance, Member, NamedPort, Resources};

/// Instance `name` of cluster `c` listening on 127.0.0.1:`port` (its "client" port), with
/// data and config directories under `/srv/<name>`, term 1, no role, no credentials and
/// 1 GiB of memory. Change fields on the value for more.
pub fn instance(name: &str, port: u16) -> Instance {
    Instance {
        cluster: "c".into(),
        component: "main".into(),
        name: name.into(),
        engine_version: String::new(),
        endpoint: Endpoint {
            host: "127.0.0.1".into(),
            port,
        },
        ports: vec![NamedPort {
            name: "client".into(),
            port,
        }],
        data_dir: Some(format!("/srv/{name}/data")),
        config_dir: Some(format!("/srv/{name}/config")),
        archive_dir: None,
        role: None,
        shard: None,
        term: 1,
        credentials: None,
        resources: Resources {
            cpu_millis: 0,
            memory_bytes: 1 << 30,
            storage_bytes: 0,
        },
    }
}

/// Member `name` on 127.0.0.1:`port` in `role`, healthy.
pub fn member(name: &str, port: u16, role: &str) -> Member {
    Member {
        name: name.into(),
        endpoint: Endpoint {
            host: "127.0.0.1".into(),
            port,
        },
        ports: vec![NamedPort {
            name: "client".into(),
            port,
        }],
        role: Some(role.into()),
        healthy: true,
        shard: None,
    }
}
