import type { Idp, Principal } from "../context.ts";
import type { Router } from "../http.ts";

export function registerTokenRoutes(_router: Router<Principal>, _idp: Idp): void {}
