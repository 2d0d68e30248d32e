use coffer_engine::format::KeyId;

use crate::cli::{Global, KeyCommand};
use crate::{exit, password};

pub async fn run(g: &Global, cmd: KeyCommand) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    match cmd {
        KeyCommand::List => {
            let keys = repo.list_keys().await?;
            if g.json {
                super::print_json(&keys)?;
                return Ok(exit::OK);
            }
            println!(
                " {:<9} {:<10} {:<16} {:<25} KDF",
                "ID", "User", "Host", "Created"
            );
            println!("{}", "-".repeat(80));
            for k in &keys {
                let mark = if k.current { '*' } else { ' ' };
                match (&k.damaged, &k.kdf) {
                    (Some(why), _) => println!("{mark}{:<9} DAMAGED: {why}", k.id.short()),
                    (None, Some(kdf)) => println!(
                        "{mark}{:<9} {:<10} {:<16} {:<25} argon2id m={} KiB t={} p={}",
                        k.id.short(),
                        k.username,
                        k.hostname,
                        crate::fmt::time(&k.created),
                        kdf.memory_kib,
                        kdf.iterations,
                        kdf.parallelism
                    ),
                    (None, None) => println!("{mark}{:<9}", k.id.short()),
                }
            }
            println!("{}", "-".repeat(80));
            println!("* is the key this command opened the repository with");
        }
        KeyCommand::Add(a) => {
            let pw = password::new_password(a.new_password_file.as_deref())?;
            let id = repo.add_key(&pw, a.kdf.cost()?).await?;
            report(g, "added", &id)?;
        }
        KeyCommand::Remove { id } => {
            let keys = repo.list_keys().await?;
            let matches: Vec<KeyId> = keys
                .iter()
                .map(|k| k.id)
                .filter(|k| k.to_hex().starts_with(&id.to_ascii_lowercase()))
                .collect();
            let target = match matches.as_slice() {
                [one] => *one,
                [] => anyhow::bail!("no key matches {id:?}; list keys with `coffer key list`"),
                _ => anyhow::bail!("key prefix {id:?} is ambiguous; give more digits"),
            };
            repo.remove_key(&target).await?;
            report(g, "removed", &target)?;
        }
        KeyCommand::Passwd(a) => {
            let pw = password::new_password(a.new_password_file.as_deref())?;
            let mut repo = std::sync::Arc::try_unwrap(repo)
                .map_err(|_| anyhow::anyhow!("the repository is in use"))?;
            let id = repo.change_password(&pw, a.kdf.cost()?).await?;
            report(g, "password changed; new key", &id)?;
        }
    }
    Ok(exit::OK)
}

fn report(g: &Global, what: &str, id: &KeyId) -> anyhow::Result<()> {
    if g.json {
        super::print_json(&serde_json::json!({ "message_type": what, "id": id.to_hex() }))
    } else {
        if !g.quiet {
            println!("{what} {}", id.short());
        }
        Ok(())
    }
}
