# frozen_string_literal: true

# For the test apps a real Sidekiq runs (6.4, 7.3 or 8.1): its server polls the schedule and retry
# sets every second instead of every 5 s, so tests of scheduled and retried jobs stay short.
Sidekiq.configure_server do |config|
  if config.respond_to?(:options)
    config.options[:poll_interval_average] = 1 # 6.x
  else
    config[:poll_interval_average] = 1
  end
end
