# frozen_string_literal: true

# Waits for the worker, then reads back what ran and what Sidekiq's API sees; exit 1 on a mismatch.
require_relative "../config/environment"
require "sidekiq/api"

expected = {"WelcomeMailJob" => 3, "ReminderJob" => 1, "ImportRowJob" => 20, "SyncJob" => 2, "StaleJob" => 1}
runs = []
deadline = Time.now + 30
loop do
  runs = Sidekiq.redis { |c| c.lrange("shop:runs", 0, -1) }.map { |json| JSON.parse(json) }
  break if runs.size >= expected.values.sum || Time.now > deadline

  sleep 0.2
end
counts = runs.group_by { |run| run["job"] }.transform_values(&:size)
expected.each { |job, n| puts format("  %-15s ran %2d time(s)  %s", job, counts[job].to_i, counts[job] == n ? "ok" : "MISMATCH (expected #{n})") }
sync = runs.select { |run| run["job"] == "SyncJob" }.map { |run| run["executions"] }
reminder = runs.find { |run| run["job"] == "ReminderJob" }
puts "  SyncJob executions #{sync.inspect} (retry_on: failed once, succeeded on the retry); " \
     "StaleJob discarded by discard_on; ReminderJob ran #{reminder && reminder["late_by_s"]} s after its time"
stats = Sidekiq::Stats.new
puts "  Sidekiq::Stats: processed=#{stats.processed} failed=#{stats.failed} retry=#{stats.retry_size} dead=#{stats.dead_size} scheduled=#{stats.scheduled_size}"
Sidekiq::ProcessSet.new.each { |p| puts "  Sidekiq::ProcessSet: #{p["identity"]} tag=#{p["tag"]} queues=#{p["queues"].inspect} concurrency=#{p["concurrency"]}" }
# (The Rust part of the demo leaves its own jobs in the retry and dead sets; none of the app's.)
failed = (Sidekiq::RetrySet.new.to_a + Sidekiq::DeadSet.new.to_a).map(&:display_class) & expected.keys
puts "  none of the app's jobs in the RetrySet or DeadSet: #{failed.empty? ? "ok" : "MISMATCH #{failed.inspect}"}"
ok = counts == expected && sync == [1, 2] && failed.empty?
exit(ok ? 0 : 1)
