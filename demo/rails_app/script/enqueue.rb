# frozen_string_literal: true

# What the app does in its controllers: enqueue with ActiveJob (queue_adapter = :rustq).
require_relative "../config/environment"

3.times { |user| WelcomeMailJob.perform_later(user) }
ReminderJob.set(wait: 2.seconds).perform_later(7, 2.seconds.from_now.to_f)
rows = (1..20).map { |row| ImportRowJob.new(row) }
# Rails 7.1+: ActiveJob.perform_all_later(rows). Rails 6.1 has no bulk enqueue; rustq gives it one.
ActiveJob.respond_to?(:perform_all_later) ? ActiveJob.perform_all_later(rows) : Rustq.perform_all_later(rows)
SyncJob.perform_later("acme")
StaleJob.perform_later(42)
puts "enqueued 3 mails, 1 reminder (in 2 s), 20 import rows in one round trip, 1 sync, 1 stale job"
