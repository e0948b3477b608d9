# frozen_string_literal: true

# The native extension alone: `rake compile` puts it next to this file; an installed gem has it
# on the load path. `rustq-worker` loads it before the app it boots (which then requires rustq).
dev_build = File.expand_path("rustq.so", __dir__)
File.exist?(dev_build) ? require(dev_build) : require("rustq.so")
