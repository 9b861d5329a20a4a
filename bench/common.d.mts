// Types for bench/common.mjs, for the TypeScript benchmark drivers.
export declare const root: string;
export declare function benchArgs(argv?: readonly string[]): Map<string, string>;
export declare function requireBuiltApes(): string;
export declare function buildBareSea(work: string): string;
export declare function childTicks(): number;
export declare function processCpuMs(pid: number): number;
export declare function quantile(xs: readonly number[], p: number): number;
