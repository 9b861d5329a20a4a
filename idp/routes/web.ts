import { ProblemError } from "../../protocol/problem.ts";
import type { Router } from "../../server/http.ts";
import { Assets, assetReply } from "../../server/web/assets.ts";
import { WEB_PATHS } from "../web/paths.ts";

/** The IdP's static files (idp/web/assets/): robots.txt keeps crawlers off; /assets/ for pages; /sw.js, the service worker. */
export function registerWebRoutes<P>(router: Router<P>): void {
  const assets = Assets.of("idp", new URL("../web/assets/", import.meta.url));
  const serve = (name: string) => {
    const asset = assets.get(name);
    if (!asset) throw new ProblemError("not_found", "no such asset");
    return asset;
  };
  router.add("GET", "/robots.txt", false, (call) => assetReply(call, serve("robots.txt")));
  router.add("GET", WEB_PATHS.serviceWorker, false, (call) => assetReply(call, serve("sw.js")));
  router.add("GET", "/assets/:name", false, (call) => assetReply(call, serve(call.params.name!)));
}
