//! `--set section.key=value`: a recipe key overridden from the command line.

/// Keys a recipe gives one of, never both: overriding one drops the other,
/// so `--set optim.steps=16` shortens a recipe written in epochs.
const ALTERNATIVES: [(&str, &str); 2] = [
    ("optim.steps", "optim.epochs"),
    ("adapter.targets", "adapter.target_regex"),
];

/// Sets the dotted key of `o` (`section.key=value`) in `table`, creating
/// sections on the way.
pub(crate) fn apply(table: &mut toml::Table, o: &str) -> Result<(), String> {
    let (key, value) = o.split_once('=').ok_or("expected section.key=value")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = parts.split_last().expect("split gives one part");
    let mut t = table;
    for s in sections {
        t = t
            .entry(s.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("`{s}` is not a section"))?;
    }
    for (x, y) in ALTERNATIVES {
        let other = match key.trim() {
            k if k == x => y,
            k if k == y => x,
            _ => continue,
        };
        t.remove(other.rsplit_once('.').map_or(other, |(_, leaf)| leaf));
    }
    t.insert(last.to_string(), override_value(value.trim()));
    Ok(())
}

/// Parses an override value as TOML, or as a bare string when it is not
/// TOML (`--set model.path=runs/x`).
fn override_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
