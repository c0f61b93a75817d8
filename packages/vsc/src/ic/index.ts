export * from './client.js';
export * from './services.js';
