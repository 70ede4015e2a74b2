# Portcullis container image (Node 24 LTS). Build: docker build -t portcullis .
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY policies/bundle.tar.gz ./policies/bundle.tar.gz
COPY config ./config
RUN mkdir -p /var/lib/portcullis && chown node:node /var/lib/portcullis
USER node
EXPOSE 5000
VOLUME ["/var/lib/portcullis"]
ENV PORTCULLIS__dataDir=/var/lib/portcullis
# --max-semi-space-size=8: V8's young generation stays at 16 MiB instead of growing to 64 MiB under a steady request
# rate; README "Memory" says why and what it costs. The same flag is on the bin's shebang and in `npm start`.
ENTRYPOINT ["node", "--max-semi-space-size=8", "dist/cli.js"]
CMD ["serve", "--config", "config/portcullis.yaml"]
