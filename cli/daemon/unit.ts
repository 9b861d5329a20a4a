import type { NestLayout } from "./host.ts";

/**
 * The Nest's systemd unit, as `apes daemon install` writes it (the same standard as
 * packaging/systemd/apes-idp.service.in: `systemd-analyze verify` clean, exposure checked by
 * test/e2e/nest-host.test.ts). It is weaker than the IdP's in exactly the places the Nest's job
 * needs, and only there: its privileged steps go through the setuid shim (the elevation path every
 * ape uses), so NoNewPrivileges= and RestrictSUIDSGID= must stay off, and the capabilities the
 * approved root commands use (creating users, chowning their HOME, running an agent as its user)
 * stay in the bounding set; the commands write /etc (passwd, the agents' specs) and
 * $(LOCALSTATEDIR)/lib/apes-agents, and the shim it runs appends to its audit log and JWKS cache under
 * /var, so ProtectSystem= is "full", not "strict". ProtectProc= stays off: the Nest confirms a pause
 * by reading the agent's /proc entry, and agents are other users. Exposure 3.1 (the IdP's: 1.7).
 * Nothing runs as root without a grant the owner approved; the service itself is _apes-nest.
 */
export function nestUnit(layout: NestLayout): string {
  const exec = `${layout.installed.prefix}/libexec/apes/apes`;
  const agents = layout.agentsHome;
  const etcApes = `${layout.installed.sysconfdir}/apes`;
  // passwd, group and shadow live in /etc whatever SYSCONFDIR is; "-": a path that is missing is skipped.
  const writable = [
    layout.home,
    `-${agents}`,
    ...(etcApes.startsWith("/etc/") ? [] : [`-${etcApes}`]),
    "/etc",
  ];
  return `# The apes Nest (apes daemon run) as a system service. Written by "apes daemon install";
# set up first with "apes daemon init". It never enables or starts itself:
#   systemctl daemon-reload && systemctl enable --now apes-nest
# Settings: ${layout.config} (SIGHUP, i.e. systemctl reload apes-nest, re-reads it).
# Logs (JSON lines on stderr, never a token): journalctl -u apes-nest

[Unit]
Description=apes Nest: supervises agents, takes intents from the troop (apes daemon run)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User=_apes-nest
Group=_apes-nest
Environment=HOME=${layout.home}
WorkingDirectory=${layout.home}
ExecStart=${exec} daemon run
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM drains: the intent in flight finishes, the agents are stopped, the socket closed.
KillMode=mixed
TimeoutStopSec=30s
Restart=on-failure
RestartSec=2s
# 2: bad command line, 78: bad settings; retrying cannot fix either.
RestartPreventExitStatus=2 78
UMask=0077

ReadWritePaths=${writable.join(" ")}
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service @setuid @chown
SystemCallErrorNumber=EPERM
# What approved root commands need (useradd, chown of an agent's HOME, becoming the agent's user,
# signalling its processes); nothing else.
CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_KILL CAP_AUDIT_WRITE
# Off on purpose (see above): the shim is setuid.
NoNewPrivileges=no

[Install]
WantedBy=multi-user.target
`;
}
