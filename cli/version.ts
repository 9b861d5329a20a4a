declare const __APES_VERSION__: string | undefined;

/** Injected by the bundler (scripts/build.mjs); "dev" when run from source (tests). */
export const VERSION: string = typeof __APES_VERSION__ === "string" ? __APES_VERSION__ : "0.0.0-dev";
