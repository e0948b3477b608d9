# The demo's job classes, as a Rails app would declare them. Their handlers are written in Rust
# (crates/rustq-engine/examples/billing_worker.rs); Ruby only enqueues.
require "rustq"

module Billing
  class ChargeJob
    include Rustq::Job
    rustq_options queue: "critical", retry: 5
  end

  class FlakyGatewayJob
    include Rustq::Job
  end

  # Held back by the worker's check point until month end: it never runs in the demo.
  class MonthlyReportJob
    include Rustq::Job
  end
end
