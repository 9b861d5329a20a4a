/**
 * The connection caps' defaults, in a module that imports nothing: `apes idp serve --help` shows
 * them, and the command tree every `apes` start builds must not load the server to do so.
 */
export const DEFAULT_MAX_CONNECTIONS = 4096;
export const DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256;
/** New connections per client: each costs the HTTP parser its first read (up to 64 KiB) before a
 *  request can be refused, so the rate of new ones is bounded too, not only how many are open. */
export const DEFAULT_CONNECTION_RATE = "300/10s";
