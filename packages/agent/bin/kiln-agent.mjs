#!/usr/bin/env node
// The package's `kiln-agent` command. A file in git rather than dist/main.js itself, which does not
// exist yet when a fresh checkout is installed (pnpm would fail to link the command and warn).
import '../dist/main.js';
