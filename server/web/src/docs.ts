// /docs: swagger-ui (swagger-ui-dist, embedded) rendering /openapi.json.
// A script of its own, since the Content-Security-Policy allows no inline one.
declare const SwaggerUIBundle: ((options: Record<string, unknown>) => unknown) & {
  presets: { apis: unknown };
};

window.addEventListener('DOMContentLoaded', () => {
  SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
    tryItOutEnabled: false,
    // Credentials typed into "Authorize" stay in the page's memory only.
    persistAuthorization: false,
  });
});
