//! Redis's parameter schema, the values the addon derives (`maxmemory` from the instance's
//! memory), the rendered `redis.conf`, and how a parameter value is written for Redis
//! (`CONFIG SET`, the config file) and recognised when read back (`CONFIG GET`).

use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

const MIB: i64 = 1 << 20;

/// The parameters users may set (from `addon.toml`). `maxmemory` has no fixed default: it is
/// derived from the instance's memory (see [`derived_maxmemory`]).
pub fn schema() -> Vec<ParamSpec> {
    shoal_sdk::manifest_file!("addon.toml").parameters
}

/// `maxmemory` when the user set none: three quarters of the instance memory (Redis needs
/// room beyond its data for client buffers, replication buffers and the copy-on-write of a
/// forked snapshot), 0 (no limit) when the instance has no memory limit.
pub fn derived_maxmemory(resources: &Resources) -> i64 {
    let memory = i64::try_from(resources.memory_bytes).unwrap_or(i64::MAX);
    if memory <= 0 {
        0
    } else {
        (memory / 4 * 3).max(MIB)
    }
}

/// The effective value of `name` for an instance with `resources`: the user's, the schema
/// default, or what the addon derives.
pub fn effective_value(p: &Lookup<'_>, name: &str, resources: &Resources) -> Option<Value> {
    match p.get(name) {
        Some(v) => Some(v.clone()),
        None if name == "maxmemory" => Some(Value::Integer(derived_maxmemory(resources))),
        None => None,
    }
}

/// Every parameter of the schema with its effective value.
pub fn effective(params: &[Param], resources: &Resources) -> Vec<Param> {
    let schema = schema();
    let p = Lookup::new(&schema, params);
    schema
        .iter()
        .filter_map(|s| {
            effective_value(&p, &s.name, resources).map(|value| Param {
                name: s.name.clone(),
                value,
            })
        })
        .collect()
}

/// Rules the schema cannot say: `timeout` is whole seconds in Redis.
pub fn validate(params: &[Param]) -> Vec<ParamError> {
    let mut errors = shoal_sdk::params::validate(&schema(), params);
    for p in params {
        if p.name == "timeout" {
            if let Value::Integer(ms) = p.value {
                if ms % 1000 != 0 {
                    errors.push(ParamError {
                        name: p.name.clone(),
                        message: format!(
                            "{ms} ms is not a whole number of seconds (Redis counts seconds)"
                        ),
                    });
                }
            }
        }
    }
    errors
}

/// `value` of parameter `name` as Redis spells it (config file and `CONFIG SET` alike).
pub fn redis_value(name: &str, value: &Value) -> String {
    match (name, value) {
        ("timeout", Value::Integer(ms)) => (ms / 1000).to_string(),
        (_, Value::Boolean(b)) => if *b { "yes" } else { "no" }.to_string(),
        (_, v) => v.to_string(),
    }
}

/// Whether `got` (from `CONFIG GET`) is `want` as [`redis_value`] writes it.
pub fn matches(name: &str, want: &Value, got: &str) -> bool {
    let want = redis_value(name, want);
    want.eq_ignore_ascii_case(got.trim())
}

/// A string as a double-quoted Redis config argument (`sdssplitargs`): quotes, backslashes
/// and control characters escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The primary a replica follows.
pub fn primary_of(members: &[Member]) -> Option<&Member> {
    members
        .iter()
        .find(|m| m.role.as_deref() == Some("primary"))
}

/// `redis.conf` for `instance`: its own address and data directory, the platform account
/// `(user, password)` (the hooks' own, and replicas' toward their primary; the users'
/// `default` account stays off until `account-provision` sets it), `replicaof` for a
/// replica, logs to stdout (the host keeps the server's output as its log), and the
/// parameters.
pub fn redis_conf(
    instance: &Instance,
    members: &[Member],
    params: &[Param],
    platform: (&str, &str),
) -> HookResult<String> {
    let (platform_user, password) = platform;
    if !shoal_sdk::accounts::valid_account_name(platform_user) {
        return Err(HookError::invalid(format!(
            "platform account name {platform_user:?} is not a plain name"
        )));
    }
    let schema = schema();
    let p = Lookup::new(&schema, params);
    let data = instance
        .data_dir
        .as_deref()
        .ok_or_else(|| HookError::invalid("the host gave no data directory"))?;
    let port = instance
        .port("client")
        .ok_or_else(|| HookError::invalid("no port named \"client\" was allocated"))?;
    let value = |name: &str| -> HookResult<String> {
        effective_value(&p, name, &instance.resources)
            .map(|v| redis_value(name, &v))
            .ok_or_else(|| HookError::invalid(format!("{name}: no value")))
    };
    let mut s = format!(
        "# Rendered by Shoal for {cluster}/{name}; rewritten before every start, do not edit.\n\
         port {port}\n\
         bind {host}\n\
         protected-mode yes\n\
         daemonize no\n\
         supervised no\n\
         logfile \"\"\n\
         loglevel notice\n\
         always-show-logo no\n\
         dir {dir}\n\
         dbfilename dump.rdb\n\
         appenddirname \"appendonlydir\"\n\
         appendfilename \"appendonly.aof\"\n\
         aof-use-rdb-preamble yes\n\
         save 3600 1 300 100 60 10000\n\
         # The users' account (admin-user \"default\") is off until Shoal provisions it; the\n\
         # platform's account runs the hooks and replication (its password as a hash).\n\
         user default off resetpass resetkeys resetchannels -@all\n\
         user {platform_user} on #{hash} ~* &* +@all\n\
         masteruser {platform_user}\n\
         masterauth {pw}\n\
         replica-read-only yes\n\
         replica-serve-stale-data yes\n\
         repl-diskless-sync yes\n\
         # Start a full sync at once instead of waiting 5 s for more replicas to batch.\n\
         repl-diskless-sync-delay 0\n\
         repl-backlog-size 16mb\n\
         # The fence (demote) raises this at run time; a start always begins unfenced.\n\
         min-replicas-to-write 0\n\
         maxmemory {maxmemory}\n\
         maxmemory-policy {policy}\n\
         appendonly {appendonly}\n\
         appendfsync {appendfsync}\n\
         timeout {timeout}\n\
         databases {databases}\n\
         io-threads {io_threads}\n\
         maxclients {maxclients}\n",
        cluster = instance.cluster,
        name = instance.name,
        host = instance.endpoint.host,
        dir = quote(data),
        pw = quote(password),
        hash = crate::password_hash(password),
        maxmemory = value("maxmemory")?,
        policy = value("maxmemory-policy")?,
        appendonly = value("appendonly")?,
        appendfsync = value("appendfsync")?,
        timeout = value("timeout")?,
        databases = value("databases")?,
        io_threads = value("io-threads")?,
        maxclients = value("maxclients")?,
    );
    if instance.shard.is_some() {
        // Redis Cluster: the node's identity and view of the cluster in nodes.conf (in the
        // data directory: it belongs to this node); its bus on a port of its own. Shards
        // are formed by form-shards, never by replicaof (refused in cluster mode).
        let bus = instance
            .port("bus")
            .ok_or_else(|| HookError::invalid("no port named \"bus\" was allocated"))?;
        s.push_str(&format!(
            "cluster-enabled yes\n\
             cluster-config-file nodes.conf\n\
             cluster-port {bus}\n\
             cluster-node-timeout {timeout}\n\
             cluster-require-full-coverage yes\n",
            timeout = value("cluster-node-timeout")?,
        ));
    } else if instance.role.as_deref() == Some("replica") {
        let primary = primary_of(members).ok_or_else(|| {
            HookError::invalid("a replica needs a member with role \"primary\" to follow")
        })?;
        s.push_str(&format!(
            "replicaof {} {}\n",
            primary.endpoint.host, primary.endpoint.port
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_config_arguments() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x\"y\\z\n"), "\"x\\\"y\\\\z\\x0a\"");
    }

    #[test]
    fn values_as_redis_writes_them() {
        assert_eq!(redis_value("timeout", &Value::Integer(30_000)), "30");
        assert_eq!(redis_value("appendonly", &Value::Boolean(true)), "yes");
        assert!(matches("maxmemory", &Value::Integer(1 << 20), "1048576"));
        assert!(matches(
            "maxmemory-policy",
            &Value::Text("allkeys-lru".into()),
            "allkeys-lru"
        ));
    }

    fn instance(role: &str) -> Instance {
        Instance {
            component: "redis".into(),
            engine_version: "7.0".into(),
            role: Some(role.into()),
            ..shoal_sdk::testing::instance("c-1", 7001)
        }
    }

    #[test]
    fn renders_replicaof_only_for_a_replica_and_quotes_the_password() {
        let primary = Member {
            name: "c-0".into(),
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port: 7000,
            },
            ports: vec![],
            role: Some("primary".into()),
            healthy: true,
            shard: None,
        };
        let set = [Param {
            name: "maxmemory-policy".into(),
            value: Value::Text("allkeys-lru".into()),
        }];
        let conf = redis_conf(
            &instance("replica"),
            &[primary.clone()],
            &set,
            ("shoal", "p\"w"),
        )
        .unwrap();
        assert!(conf.contains("\nreplicaof 127.0.0.1 7000\n"), "{conf}");
        assert!(!conf.contains("requirepass"), "{conf}");
        // The users' account stays off until provisioned; the platform's by hash only.
        assert!(
            conf.contains("\nuser default off resetpass resetkeys resetchannels -@all\n"),
            "{conf}"
        );
        assert!(
            conf.contains(&format!(
                "\nuser shoal on #{} ~* &* +@all\n",
                crate::password_hash("p\"w")
            )),
            "{conf}"
        );
        assert!(conf.contains("masteruser shoal\n"), "{conf}");
        assert!(conf.contains("masterauth \"p\\\"w\"\n"), "{conf}");
        assert!(conf.contains("\nport 7001\n"), "{conf}");
        assert!(conf.contains("dir \"/srv/c-1/data\"\n"), "{conf}");
        assert!(conf.contains("maxmemory-policy allkeys-lru\n"), "{conf}");
        // Three quarters of 1 GiB, derived.
        assert!(conf.contains("maxmemory 805306368\n"), "{conf}");
        let conf = redis_conf(&instance("primary"), &[primary], &[], ("shoal", "pw")).unwrap();
        assert!(!conf.contains("replicaof"), "{conf}");
        assert!(redis_conf(&instance("replica"), &[], &[], ("shoal", "pw")).is_err());
    }

    #[test]
    fn maxmemory_follows_memory() {
        let r = |m| Resources {
            cpu_millis: 0,
            memory_bytes: m,
            storage_bytes: 0,
        };
        assert_eq!(derived_maxmemory(&r(0)), 0);
        assert_eq!(derived_maxmemory(&r(512 << 20)), 384 << 20);
    }
}
