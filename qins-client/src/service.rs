//! `qins service install|uninstall|status`: run qinsd at login under launchd
//! (macOS LaunchAgent) or systemd (Linux user unit). The files come from the
//! templates in `launchd/`, embedded here so there is one source of truth;
//! rendering is pure and tested, and `--dry-run` prints instead of acting.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::connect;

pub const PLIST_TEMPLATE: &str = include_str!("../../launchd/dev.qins.qinsd.plist");
pub const UNIT_TEMPLATE: &str = include_str!("../../launchd/qinsd.service");
pub const LABEL: &str = "dev.qins.qinsd";
const UNIT_NAME: &str = "qinsd.service";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Write the service file and start qinsd now and at every login.
    Install(InstallArgs),
    /// Stop qinsd and remove the service file.
    Uninstall(Common),
    /// Show the service state and whether the socket answers.
    Status(Common),
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Model for qinsd to load at start [default: none; use `qins load`].
    #[arg(long)]
    pub model: Option<String>,
    /// Models directory [default: ~/.qins/models].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// The qinsd binary [default: the one next to qins, else the one on PATH].
    #[arg(long)]
    pub qinsd: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct Common {
    /// Print the file and the commands instead of writing and running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Service manager [default: launchd on macOS, systemd elsewhere].
    #[arg(long, value_enum)]
    pub manager: Option<Manager>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Launchd,
    Systemd,
}

impl Common {
    fn manager(&self) -> Manager {
        self.manager.unwrap_or(if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        })
    }
}

/// One command to run; `may_fail` for the ones that fail when there is
/// nothing to undo (stopping a service that is not loaded).
#[derive(Debug, PartialEq)]
struct Step {
    argv: Vec<String>,
    may_fail: bool,
}

fn step(argv: &[&str], may_fail: bool) -> Step {
    Step {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        may_fail,
    }
}

/// `socket` is where status looks; `explicit_socket` is passed on to qinsd
/// only when the user chose one (qinsd's default matches the client's).
pub fn run(args: Args, socket: &Path, explicit_socket: Option<&Path>) -> Result<()> {
    let home = qins_proto::socket::home_dir();
    match args.action {
        Action::Install(install) => {
            let manager = install.common.manager();
            let dry_run = install.common.dry_run;
            let qinsd = find_qinsd(install.qinsd.as_deref(), dry_run)?;
            let models_dir = match &install.models_dir {
                Some(dir) => std::path::absolute(dir)
                    .with_context(|| format!("cannot resolve {}", dir.display()))?,
                None => home.join(".qins").join("models"),
            };
            let argv = qinsd_argv(
                &qinsd,
                install.model.as_deref(),
                &models_dir,
                explicit_socket,
            )?;
            let (file, contents, steps) = match manager {
                Manager::Launchd => {
                    let file = launch_agent_path(&home);
                    let log = home.join("Library").join("Logs").join("qinsd.log");
                    let contents = render_plist(PLIST_TEMPLATE, &argv, &utf8(&log)?)?;
                    let domain = format!("gui/{}", uid());
                    let service = format!("{domain}/{LABEL}");
                    let steps = vec![
                        // Unload a previous install so the new file takes effect.
                        step(&["launchctl", "bootout", &service], true),
                        step(&["launchctl", "bootstrap", &domain, &utf8(&file)?], false),
                    ];
                    (file, contents, steps)
                }
                Manager::Systemd => {
                    let file = unit_path(&home);
                    let contents = render_unit(UNIT_TEMPLATE, &argv)?;
                    let steps = vec![
                        step(&["systemctl", "--user", "daemon-reload"], false),
                        step(&["systemctl", "--user", "enable", UNIT_NAME], false),
                        // restart, not `enable --now`: a reinstall must pick
                        // up the new ExecStart of a running service.
                        step(&["systemctl", "--user", "restart", UNIT_NAME], false),
                    ];
                    (file, contents, steps)
                }
            };
            if dry_run {
                outln!("# would write {}:", file.display())?;
                crate::output::print(&contents)?;
                print_steps(&steps)?;
                return Ok(());
            }
            if !qinsd.is_file() {
                bail!("{} does not exist; pass --qinsd PATH", qinsd.display());
            }
            let mut dirs = vec![models_dir.clone()];
            dirs.extend(file.parent().map(Path::to_path_buf));
            if manager == Manager::Launchd {
                dirs.push(home.join("Library").join("Logs"));
            }
            for dir in dirs {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&file, contents)
                .with_context(|| format!("cannot write {}", file.display()))?;
            outln!("wrote {}", file.display())?;
            run_steps(&steps)?;
            outln!("qinsd is installed and starts at login; check it with: qins service status")?;
            Ok(())
        }
        Action::Uninstall(common) => {
            let (file, steps) = match common.manager() {
                Manager::Launchd => (
                    launch_agent_path(&home),
                    vec![step(
                        &["launchctl", "bootout", &format!("gui/{}/{LABEL}", uid())],
                        true,
                    )],
                ),
                Manager::Systemd => (
                    unit_path(&home),
                    vec![step(
                        &["systemctl", "--user", "disable", "--now", UNIT_NAME],
                        true,
                    )],
                ),
            };
            if common.dry_run {
                print_steps(&steps)?;
                outln!("# would remove {}", file.display())?;
                return Ok(());
            }
            run_steps(&steps)?;
            match std::fs::remove_file(&file) {
                Ok(()) => outln!("removed {}", file.display())?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    outln!("{} was not installed", file.display())?;
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot remove {}", file.display()));
                }
            }
            if common.manager() == Manager::Systemd {
                run_steps(&[step(&["systemctl", "--user", "daemon-reload"], true)])?;
            }
            Ok(())
        }
        Action::Status(common) => {
            let (file, argv) = match common.manager() {
                Manager::Launchd => (
                    launch_agent_path(&home),
                    vec![
                        "launchctl".to_string(),
                        "print".into(),
                        format!("gui/{}/{LABEL}", uid()),
                    ],
                ),
                Manager::Systemd => (
                    unit_path(&home),
                    ["systemctl", "--user", "status", "qinsd", "--no-pager"]
                        .map(String::from)
                        .to_vec(),
                ),
            };
            if common.dry_run {
                print_steps(&[Step {
                    argv,
                    may_fail: true,
                }])?;
                return Ok(());
            }
            let installed = if file.exists() {
                "installed"
            } else {
                "not installed"
            };
            outln!("service file: {} ({installed})", file.display())?;
            service_state(common.manager(), &argv)?;
            outln!("socket: {} ({})", socket.display(), socket_state(socket))?;
            Ok(())
        }
    }
}

/// Prints what the service manager says: a few lines of `launchctl print`
/// (which is long), all of `systemctl status` (which is already a summary).
fn service_state(manager: Manager, argv: &[String]) -> std::io::Result<()> {
    let output = match Command::new(&argv[0]).args(&argv[1..]).output() {
        Ok(output) => output,
        Err(err) => {
            return outln!("service: cannot run {}: {err}", argv[0]);
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match manager {
        Manager::Launchd if !output.status.success() => outln!("service: not loaded")?,
        Manager::Launchd => {
            outln!("service: loaded ({LABEL})")?;
            for line in stdout.lines().map(str::trim).filter(|l| {
                ["state =", "pid =", "last exit code =", "runs ="]
                    .iter()
                    .any(|k| l.starts_with(k))
            }) {
                outln!("  {line}")?;
            }
        }
        Manager::Systemd => {
            crate::output::print(&stdout)?;
            if stdout.is_empty() {
                crate::output::print(&String::from_utf8_lossy(&output.stderr))?;
            }
        }
    }
    Ok(())
}

fn socket_state(socket: &Path) -> String {
    let probe = async {
        let mut client = connect::client(socket).await?;
        crate::stats::fetch(&mut client).await
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return format!("cannot check: {err}"),
    };
    match runtime.block_on(probe) {
        Ok(s) if s.model.is_empty() => "answering, no model loaded".into(),
        Ok(s) => format!("answering, model {}", s.model),
        Err(err) => format!("not answering: {err:#}"),
    }
}

fn print_steps(steps: &[Step]) -> std::io::Result<()> {
    for s in steps {
        let note = if s.may_fail {
            "  (a failure is ignored)"
        } else {
            ""
        };
        outln!("# would run: {}{note}", shell_words(&s.argv))?;
    }
    Ok(())
}

fn run_steps(steps: &[Step]) -> Result<()> {
    for s in steps {
        let status = Command::new(&s.argv[0])
            .args(&s.argv[1..])
            .status()
            .with_context(|| format!("cannot run {}", s.argv[0]))?;
        if !status.success() && !s.may_fail {
            bail!("`{}` failed ({status})", shell_words(&s.argv));
        }
    }
    Ok(())
}

fn launch_agent_path(home: &Path) -> PathBuf {
    home.join("Library")
        .join("LaunchAgents")
        .join(format!("{LABEL}.plist"))
}

fn unit_path(home: &Path) -> PathBuf {
    home.join(".config")
        .join("systemd")
        .join("user")
        .join(UNIT_NAME)
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// `--qinsd`, else `qinsd` next to this executable, else on PATH.
fn find_qinsd(given: Option<&Path>, dry_run: bool) -> Result<PathBuf> {
    if let Some(path) = given {
        return std::path::absolute(path)
            .with_context(|| format!("cannot resolve {}", path.display()));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("qinsd")));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("qinsd"))
            .find(|p| p.is_file() && p.is_absolute())
    });
    match beside.filter(|p| p.is_file()).or(on_path) {
        Some(path) => Ok(path),
        None if dry_run => Ok(PathBuf::from("/usr/local/bin/qinsd")),
        None => bail!("cannot find qinsd next to qins or on PATH; pass --qinsd PATH"),
    }
}

fn utf8(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// The qinsd command line the service runs.
fn qinsd_argv(
    qinsd: &Path,
    model: Option<&str>,
    models_dir: &Path,
    socket: Option<&Path>,
) -> Result<Vec<String>> {
    let mut argv = vec![utf8(qinsd)?];
    if let Some(model) = model {
        argv.extend(["--model".into(), model.to_string()]);
    }
    argv.extend(["--models-dir".into(), utf8(models_dir)?]);
    if let Some(socket) = socket {
        argv.extend(["--socket".into(), utf8(&std::path::absolute(socket)?)?]);
    }
    Ok(argv)
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

const PLACEHOLDER_LOG: &str = "<string>/Users/USERNAME/Library/Logs/qinsd.log</string>";

/// The template with its ProgramArguments array replaced by `argv` and the
/// log placeholders by `log`, all XML-escaped.
pub fn render_plist(template: &str, argv: &[String], log: &str) -> Result<String> {
    if argv
        .iter()
        .chain([&log.to_string()])
        .any(|a| has_control(a))
    {
        bail!("control characters cannot go into a plist");
    }
    let key = template
        .find("<key>ProgramArguments</key>")
        .context("plist template: no ProgramArguments")?;
    let open = key
        + template[key..]
            .find("<array>")
            .context("plist template: ProgramArguments is not an array")?;
    let close = open
        + template[open..]
            .find("</array>")
            .context("plist template: unterminated array")?
        + "</array>".len();
    let mut array = String::from("<array>\n");
    for arg in argv {
        array.push_str(&format!("\t\t<string>{}</string>\n", xml_escape(arg)));
    }
    array.push_str("\t</array>");
    let rendered = format!("{}{array}{}", &template[..open], &template[close..]);
    if !rendered.contains(PLACEHOLDER_LOG) {
        bail!("plist template: no log path placeholder");
    }
    Ok(rendered.replace(
        PLACEHOLDER_LOG,
        &format!("<string>{}</string>", xml_escape(log)),
    ))
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// One ExecStart word: `%` and `$` doubled (specifiers and variables), and
/// double quotes with C escapes when the word has spaces or quoting characters.
pub fn systemd_quote(arg: &str) -> Result<String> {
    if has_control(arg) {
        bail!("control characters cannot go into a systemd unit: {arg:?}");
    }
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped != ";"
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || "\"'\\".contains(c));
    if plain {
        return Ok(escaped);
    }
    Ok(format!(
        "\"{}\"",
        escaped.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// The unit template with its ExecStart line built from `argv`.
pub fn render_unit(template: &str, argv: &[String]) -> Result<String> {
    let exec = argv
        .iter()
        .map(|a| systemd_quote(a))
        .collect::<Result<Vec<_>>>()?
        .join(" ");
    let mut found = false;
    let mut out = String::with_capacity(template.len() + exec.len());
    for line in template.lines() {
        if line.starts_with("ExecStart=") {
            found = true;
            out.push_str(&format!("ExecStart={exec}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        bail!("unit template: no ExecStart line");
    }
    Ok(out)
}

/// A command line for display, single-quoting words a shell would split.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-=:@%+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plist_gets_escaped_absolute_paths() {
        let args = argv(&[
            "/Users/a b/bin/qinsd",
            "--model",
            "R&D <v2>",
            "--models-dir",
            "/Users/a b/.qins/models",
        ]);
        let out = render_plist(PLIST_TEMPLATE, &args, "/Users/a b/Library/Logs/qinsd.log").unwrap();
        assert!(out.contains("<string>/Users/a b/bin/qinsd</string>"));
        assert!(out.contains("<string>R&amp;D &lt;v2&gt;</string>"));
        assert!(!out.contains("USERNAME") && !out.contains("smollm2"));
        assert!(!out.contains("/usr/local/bin/qinsd"));
        assert_eq!(out.matches("/Users/a b/Library/Logs/qinsd.log").count(), 2);
        assert!(out.contains("<key>KeepAlive</key>") && out.trim_end().ends_with("</plist>"));
        assert!(render_plist(PLIST_TEMPLATE, &argv(&["/q\nx"]), "/l").is_err());
    }

    #[test]
    fn systemd_words_are_quoted_only_when_needed() {
        assert_eq!(systemd_quote("/usr/bin/qinsd").unwrap(), "/usr/bin/qinsd");
        assert_eq!(systemd_quote("/home/a b/m").unwrap(), "\"/home/a b/m\"");
        assert_eq!(systemd_quote("100%").unwrap(), "100%%");
        assert_eq!(systemd_quote("$HOME").unwrap(), "$$HOME");
        assert_eq!(systemd_quote("say \"hi\"").unwrap(), r#""say \"hi\"""#);
        assert_eq!(systemd_quote(r"a\b").unwrap(), r#""a\\b""#);
        assert_eq!(systemd_quote("").unwrap(), "\"\"");
        assert_eq!(systemd_quote(";").unwrap(), "\";\"");
        assert!(systemd_quote("a\nb").is_err());
    }

    #[test]
    fn unit_gets_the_exec_line() {
        let args = argv(&["/opt/q ins/qinsd", "--models-dir", "/home/me/50% models"]);
        let out = render_unit(UNIT_TEMPLATE, &args).unwrap();
        assert!(
            out.contains(
                "\nExecStart=\"/opt/q ins/qinsd\" --models-dir \"/home/me/50%% models\"\n"
            ),
            "{out}"
        );
        assert!(out.contains("\nRestart=on-failure\n"));
        assert!(out.contains("\nWantedBy=default.target\n"));
        assert_eq!(out.matches("ExecStart=").count(), 1);
    }

    #[test]
    fn qinsd_command_line() {
        let a = qinsd_argv(
            Path::new("/bin/qinsd"),
            Some("tiny"),
            Path::new("/m"),
            Some(Path::new("/run/q.sock")),
        )
        .unwrap();
        assert_eq!(
            a,
            argv(&[
                "/bin/qinsd",
                "--model",
                "tiny",
                "--models-dir",
                "/m",
                "--socket",
                "/run/q.sock"
            ])
        );
        assert_eq!(
            shell_words(&argv(&[
                "launchctl",
                "bootstrap",
                "gui/501",
                "/a b/x.plist"
            ])),
            "launchctl bootstrap gui/501 '/a b/x.plist'"
        );
    }
}
