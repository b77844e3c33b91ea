//! A native (non-wasm) test image: a static C probe (`gcc -static`) in an
//! otherwise empty root filesystem, imported into Podman and pushed to a real
//! registry with `skopeo`, for the Podman backend's tests.

use crate::registry::Registry;
use std::path::PathBuf;
use std::process::Command;

/// The probe: one binary, one behaviour per first argument after the contract's.
pub const PROBE: &str = r#"
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *arg(int argc, char **argv, const char *key) {
    size_t n = strlen(key);
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0) return argv[i] + n;
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[argc - 1] : "";
    const char *in = arg(argc, argv, "--input1=");
    const char *out = arg(argc, argv, "--output=");
    if (strcmp(mode, "count") == 0) {
        char path[4096]; snprintf(path, sizeof path, "%s/a.txt", in);
        FILE *f = fopen(path, "r"); if (!f) { perror(path); return 3; }
        long words = 0; int c, inword = 0;
        while ((c = fgetc(f)) != EOF) {
            if (c == ' ' || c == '\n' || c == '\t') inword = 0;
            else if (!inword) { inword = 1; words++; }
        }
        snprintf(path, sizeof path, "%s/words.txt", out);
        FILE *o = fopen(path, "w"); if (!o) { perror(path); return 4; }
        fprintf(o, "%ld\n", words); fclose(o);
        printf("counted %ld words\n", words);
        extern char **environ;
        for (int n = 0; environ && environ[n]; n++) printf("env %s\n", environ[n]);
        return 0;
    }
    if (strcmp(mode, "write-input") == 0) {
        char path[4096]; snprintf(path, sizeof path, "%s/a.txt", in);
        int fd = open(path, O_WRONLY | O_APPEND);
        if (fd >= 0) { printf("opened the input for writing\n"); return 0; }
        printf("write refused: %s\n", strerror(errno));
        snprintf(path, sizeof path, "%s/new.txt", in);
        fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd >= 0) { printf("created a file in the input\n"); return 0; }
        printf("create refused: %s\n", strerror(errno));
        return 7;
    }
    if (strcmp(mode, "net") == 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(80);
        inet_pton(AF_INET, "1.1.1.1", &a.sin_addr);
        if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0) { printf("connected\n"); return 0; }
        printf("no network: %s\n", strerror(errno));
        return 8;
    }
    if (strcmp(mode, "sleep") == 0) { sleep(3600); return 0; }
    if (strcmp(mode, "memory") == 0) {
        for (size_t total = 0;; total += 1 << 20) {
            char *p = malloc(1 << 20); if (!p) return 9;
            memset(p, 1, 1 << 20);
        }
    }
    if (strcmp(mode, "flood") == 0) {
        char line[1024]; memset(line, 'x', sizeof line - 1); line[sizeof line - 1] = '\n';
        for (;;) fwrite(line, 1, sizeof line, stdout);
    }
    return 2;
}
"#;

pub fn run(cmd: &mut Command) -> String {
    if cmd.get_program() == "podman" {
        cmd.env("CONTAINERS_CONF", containers_conf());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; run scripts/setup"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// This machine class runs insitu in a sandbox without CAP_SYS_RESOURCE:
/// containers get no default ulimits, and runc (crun cannot use the host's
/// cgroup v1 hierarchy here).
pub fn containers_conf() -> PathBuf {
    let path = std::env::temp_dir().join("insitu-containers.conf");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "[containers]\ndefault_ulimits = []\n").unwrap();
    path
}

/// The probe image pushed to `registry`: (`host/probe@sha256:…`, digest).
pub fn probe_image(registry: &Registry) -> (String, String) {
    {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("probe.c"), PROBE).unwrap();
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        run(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.join("rootfs/probe"))
            .arg(dir.join("probe.c")));
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.join("rootfs"))
            .arg("-cf")
            .arg(dir.join("rootfs.tar"))
            .arg("."));
        let tag = format!("localhost/insitu-probe:{}", std::process::id());
        run(Command::new("podman")
            .args(["import", "--change", "ENTRYPOINT [\"/probe\"]"])
            .arg(dir.join("rootfs.tar"))
            .arg(&tag));
        let remote = format!("{}/probe:1", registry.host());
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("containers-storage:{tag}"),
            &format!("docker://{remote}"),
        ]));
        let digest = run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{remote}"),
        ]));
        run(Command::new("podman").args(["rmi", "-f", &tag]));
        (format!("{}/probe@{digest}", registry.host()), digest)
    }
}
